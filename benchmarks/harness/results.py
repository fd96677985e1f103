"""Timing across compared variants (interleaved rounds, ABAB..., so a change in
machine load hits all alike; medians, spreads, ratios) and a study's command
line, run and results: JSON + markdown (+ PNG) named
`<YYYY-MM-DD>-<machine>-<study>[-quick]` (benchmarks/results/ by default:
runs on other days or machines sit beside each other).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.harness import env

K = TypeVar("K")
R = TypeVar("R")


def interleave(
    variants: Mapping[K, Callable[[], R]], rounds: int, warmup: bool = False,
    on_round: Callable[[int], None] | None = None,
) -> dict[K, list[R]]:  # fmt: skip
    """Call every variant once per round, in turn; each one's results in order.
    warmup: one untimed call of each first (lazy inits, page faults);
    on_round: called with the 0-based round number after each round."""
    if warmup:
        for fn in variants.values():
            fn()
    out: dict[K, list[R]] = {key: [] for key in variants}
    for r in range(rounds):
        for key, fn in variants.items():
            out[key].append(fn())
        if on_round is not None:
            on_round(r)
    return out


def summary(ms: Sequence[float]) -> dict[str, float]:
    """Median and p10/p90 of per-round times (ms)."""
    # "inclusive": within the observed range ("exclusive" extrapolates past it, even below 0)
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "n": len(ms)}


def median_run(runs: Sequence[R], key: Callable[[R], float]) -> R:
    """The run with the median `key` (the upper one of an even count): a run
    another process slowed is dropped rather than averaged in."""
    return sorted(runs, key=key)[len(runs) // 2]


def latency_summary(completion_s: Sequence[float]) -> dict[str, float]:
    """Mean, p50 and p90 (linear interpolation, numpy's default) of request latencies."""
    q, mean = summary(completion_s), statistics.mean(completion_s)
    return {"latency_mean_s": round(mean, 4), "latency_p50_s": round(q["median_ms"], 4),
            "latency_p90_s": round(q["p90_ms"], 4)}  # fmt: skip


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None where either is missing (or b is 0)."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 4)


RESULTS = Path(__file__).resolve().parents[1] / "results"


def stem(study: str, quick: bool = False) -> str:
    """`<date>-<machine>-<study>[-quick]`: the file name of a run's results."""
    tail = "-quick" if quick else ""
    return f"{dt.date.today().isoformat()}-{env.machine_slug()}-{study}{tail}"


def publish(
    results: dict[str, Any],
    out: Path,
    name: str,
    markdown: str,
    figures: Mapping[str, Callable[[Path], object]] | None = None,
) -> Path:
    """Draw each figure (file name -> draw(path)), then write <name>.json and
    .md: the JSON after the figures, so a failed plot leaves no results file
    claiming figures that are not there."""
    out.mkdir(parents=True, exist_ok=True)
    for filename, draw in (figures or {}).items():
        draw(out / filename)
    path = out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{name}.md").write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    env.log(f"wrote {path}")
    return path


def fmt(value: Any, digits: int | None = 2) -> str:
    """A table cell: '-' for missing/NaN; floats to `digits` (None: as they are)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and digits is not None:
        return f"{value:.{digits}f}"
    return str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int | None = 2) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def report(title: str, results: dict[str, Any], header: Sequence[str], rows: Sequence) -> str:
    """A study's markdown: `# title (machine, threads)` over one table."""
    m = results["machine"]
    return (
        f"# {title} ({m['cpu']}, {m['cores']} cores, {results['threads']} thread per engine)"
        f"\n\n{md_table(header, rows)}\n"
    )


def study(
    doc: str | None,
    name: str | Callable[[argparse.Namespace], str],
    quick: str,
    body: Callable[[argparse.Namespace, Path], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
    argv: list[str] | None = None,
    options: Callable[[argparse.ArgumentParser], None] = lambda cli: None,
) -> Path:
    """A study's `main`. Its command line: the first `doc` line, --out,
    --quick (help: `quick`) and `options`; then the environment, `body(args,
    scratch folder)` (args.stem: the results' file name), and the results
    with the machine, threads and wall time, written (`publish`) and their
    markdown printed."""
    cli = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    cli.add_argument("--out", type=Path, default=RESULTS, help="results folder (%(default)s)")
    cli.add_argument("--quick", action="store_true", help=quick)
    options(cli)
    args = cli.parse_args(argv)
    args.stem = stem(name(args) if callable(name) else name, args.quick)
    env.configure()
    began = time.perf_counter()
    results: dict[str, Any] = {"machine": env.describe(), "threads": env.threads()}
    with tempfile.TemporaryDirectory(prefix="sdar-bench-") as tmp:
        results |= body(args, Path(tmp))
    results |= {"wall_s": round(time.perf_counter() - began, 1), "loadavg_end": env.loadavg()}
    text = markdown(results)
    print(text)
    return publish(results, args.out, args.stem, text)

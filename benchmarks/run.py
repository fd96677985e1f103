"""Run the benchmark suite and write results JSON, figures and tables.

    python -m benchmarks.run            # full suite (~40 min on 2 CPU cores)
    python -m benchmarks.run --quick    # CI smoke (tiny model, a few minutes)
    python -m benchmarks.run --out DIR --threads 1

Each phase runs in its own Python process, one after another (one engine
at a time, and a crash in one phase is recorded without losing the rest):

- one "model" phase per model (benchmarks.offline): SDAR B=4 and B=16
  engines, the stock AR engine, then the reference decoder;
- "serving" (benchmarks.serving): `vllm-sdar serve` + `vllm-sdar bench serve`;
- "addition" (benchmarks.addition): TPF vs threshold on the trained toy.

The trained pairs (each SDAR toy vs its own AR parent) run on their own:
`python -m benchmarks.trained` writes <date>-<machine>-trained.json/.md/.png.

Output: DIR/<YYYY-MM-DD>-<machine>[-quick].json, .md (tables) and .png figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import env
from benchmarks.config import Suite, suite
from benchmarks.stats import ratio

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"


def run_phase(
    module: str,
    args: list[str],
    frag: Path,
    threads: int,
    extra_env: dict[str, str] | None = None,
    out_flag: str = "--out",
) -> dict[str, Any]:
    """Run `python -m benchmarks.<module>` and return its JSON fragment.

    extra_env overrides the inherited environment (e.g. LD_PRELOAD, which
    must be set before the process starts); out_flag names the phase's
    option for the fragment path.
    """
    phase_env = dict(os.environ, SDAR_BENCH_THREADS=str(threads), PYTHONUNBUFFERED="1")
    phase_env.update(extra_env or {})
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args, out_flag, str(frag)]
    env.log(f"phase {module} {' '.join(args)}")
    began = time.perf_counter()
    # Progress lines from the phase go straight to this process's stderr;
    # vLLM's own INFO logging goes to the phase log file.
    log = frag.with_suffix(".log")
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=phase_env, stdout=log_file, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("[bench"):
                sys.stderr.write(line)
            log_file.write(line)
        proc.wait()
    env.log(f"phase {module} done in {time.perf_counter() - began:.0f}s (rc {proc.returncode})")
    if proc.returncode != 0 or not frag.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"phase {module} failed (rc {proc.returncode}), log {log}:\n{tail}")
    fragment = json.loads(frag.read_text())
    fragment["phase_wall_s"] = round(time.perf_counter() - began, 1)
    return fragment


def compute_ratios(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per SDAR cell: throughput ratios vs AR and vs the same-method reference."""
    index = {(c["model"], c["method"], c["batch"], c["output_len"]): c for c in cells}
    out = []
    for c in cells:
        if c["kind"] != "sdar":
            continue
        key = (c["model"], c["batch"], c["output_len"])
        ar = index.get((key[0], "ar", *key[1:]))
        ref = index.get((key[0], c["method"].replace("sdar-", "ref-", 1), *key[1:]))
        ar_tps = ar["throughput_tok_s"] if ar else None
        ref_tps = ref["throughput_tok_s"] if ref else None
        out.append(
            {
                "model": c["model"],
                "method": c["method"],
                "batch": c["batch"],
                "output_len": c["output_len"],
                "throughput_tok_s": c["throughput_tok_s"],
                "ar_throughput_tok_s": ar_tps,
                "reference_throughput_tok_s": ref_tps,
                "vs_ar": ratio(c["throughput_tok_s"], ar_tps),
                "vs_reference": ratio(c["throughput_tok_s"], ref_tps),
                "latency_mean_s": c["latency_mean_s"],
                "latency_p90_s": c["latency_p90_s"],
                "latency_mean_vs_ar": ratio(c["latency_mean_s"], ar["latency_mean_s"])
                if ar
                else None,
                "tpf": c.get("tpf"),
                "reference_tpf": ref.get("tpf") if ref else None,
                "reference_denoise_tpf": ref.get("denoise_tpf") if ref else None,
                "reference_extrapolated": ref.get("extrapolated") if ref else None,
                # Same decisions in both decoders -> same denoising-forward counts.
                "denoise_forwards_match_reference": _forwards_match(c, ref),
            }
        )
    return out


def _forwards_match(sdar: dict[str, Any], ref: dict[str, Any] | None) -> bool | None:
    if not ref:
        return None
    ours = sdar.get("denoise_forwards_per_request") or []
    theirs = ref.get("denoise_forwards_per_request") or []
    n = min(len(ours), len(theirs))
    return ours[:n] == theirs[:n] if n else None


def merge(suite_: Suite, fragments: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cells, overhead, synthetic, engines, models = [], [], [], {}, {}
    for name, frag in fragments.items():
        if not name.startswith("model:"):
            continue
        cells += frag["cells"]
        overhead += frag["overhead"]
        synthetic += frag["synthetic_tpf"]
        engines[frag["model"]["name"]] = frag["engines"]
        models[frag["model"]["name"]] = frag["model"] | {"phase_wall_s": frag["phase_wall_s"]}
    return {
        "models": models,
        "engines": engines,
        "cells": cells,
        "ratios": compute_ratios(cells),
        "overhead": overhead,
        "serving": fragments.get("serving", {"skipped": "not run"}),
        "tpf_vs_threshold": {
            "addition": fragments.get("addition", {"skipped": "not run"}),
            "synthetic": synthetic,
        },
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke mode (tiny model)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for vLLM and the reference (default 1: stable on a shared machine)",
    )
    parser.add_argument(
        "--phases",
        default="model,serving,addition",
        help="comma-separated subset of model,serving,addition",
    )
    parser.add_argument(
        "--merge-into",
        type=Path,
        default=None,
        help="rerun only serving/addition and replace those sections of this results JSON",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    suite_ = suite(mode)
    phases = set(args.phases.split(","))
    if args.merge_into is not None:
        if "model" in phases:
            parser.error("--merge-into reruns serving and/or addition only (--phases)")
        args.out = args.merge_into.parent
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.date.today().isoformat()}-{env.machine_slug()}" + ("-quick" if args.quick else "")
    if args.merge_into is not None:
        stem = args.merge_into.stem
    began = time.perf_counter()
    load_start = env.loadavg()
    env.log(f"suite {mode}: writing {args.out / stem}.json")

    fragments: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="sdar-bench-"))
    jobs: list[tuple[str, str, list[str]]] = []
    if "model" in phases:
        for plan in suite_.models:
            jobs.append(
                (
                    f"model:{plan.model.name}",
                    "offline",
                    ["--mode", mode, "--model", plan.model.name],
                )
            )
    if "serving" in phases and suite_.serving is not None:
        jobs.append(("serving", "serving", ["--mode", mode]))
    if "addition" in phases:
        jobs.append(("addition", "addition", ["--mode", mode]))
    for i, (name, module, phase_args) in enumerate(jobs):
        frag = work / f"{i}-{module}.json"
        try:
            fragments[name] = run_phase(module, phase_args, frag, args.threads)
        except Exception as exc:  # record and go on: the other phases still count
            errors[name] = str(exc)
            env.log(f"phase {name} FAILED: {str(exc)[:500]}")

    if args.merge_into is not None:
        return _merge_into(args.merge_into, suite_, fragments, errors, load_start, began)
    results: dict[str, Any] = {
        "schema_version": 1,
        "date": dt.date.today().isoformat(),
        "mode": mode,
        "machine": env.machine_slug(),
        "environment": env.describe(),
        "threads": args.threads,
        "loadavg_start": load_start,
        "loadavg_end": env.loadavg(),
        "suite": suite_.to_json(),
        "grid": {
            "prompt_len": suite_.prompt_len,
            "cells": [
                {"model": p.model.name, **c.__dict__} for p in suite_.models for c in p.cells
            ],
        },
        **merge(suite_, fragments),
        "errors": errors,
        "phase_logs": str(work),
    }
    results["wall_s"] = round(time.perf_counter() - began, 1)
    return _write(results, args.out, stem, errors)


def _write(results: dict[str, Any], out: Path, stem: str, errors: dict[str, str]) -> Path:
    from benchmarks import plots, table

    figures = plots.make_all(results, out, stem)
    results["figures"] = [f.name for f in figures]
    results["table"] = f"{stem}.md"
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(table.render(results))
    env.log(f"wrote {json_path}")
    if errors:
        env.log(f"phases with errors: {', '.join(errors)}")
    return json_path


def _merge_into(
    path: Path,
    suite_: Suite,
    fragments: dict[str, dict[str, Any]],
    errors: dict[str, str],
    load_start: float,
    began: float,
) -> Path:
    """Replace the serving/addition sections of an earlier run's results."""
    results = json.loads(path.read_text())
    if "serving" in fragments:
        results["serving"] = fragments["serving"]
        results["suite"]["serving"] = suite_.to_json()["serving"]
    if "addition" in fragments:
        results["tpf_vs_threshold"]["addition"] = fragments["addition"]
    results["errors"].update(errors)
    results.setdefault("reruns", []).append(
        {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "phases": sorted(fragments),
            "loadavg_start": load_start,
            "loadavg_end": env.loadavg(),
            "wall_s": round(time.perf_counter() - began, 1),
        }
    )
    return _write(results, path.parent, path.stem, errors)


if __name__ == "__main__":
    main()

"""Cost of the sampling-parity transforms on the unmasking step (issue 15).

Times what the runner's `sample_tokens` does per engine step, one batch of
requests each with a fully masked block of real-vocabulary logits:

- `before`: `denoise_step` of the decoding module as it was before the
  transforms and logprobs existed (read from git at --before, default the
  last commit without them), on the same inputs;
- `after`: today's `denoise_step_full` for requests that use none of the
  transforms (the path every plain request takes);
- `after+options`: the same batch with every transform and logprobs=5, for
  scale (what a request pays for using them).

The three are interleaved round by round (ABCABC...), so machine load
drifts over all equally; the median and p10/p90 of the per-step times are
reported. Run: `python -m benchmarks.sampling [--quick] [--out benchmarks/results]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.env import describe, loadavg, log, machine_slug
from vllm_sdar.algorithm.decoding import (
    Denoising,
    RuleContext,
    Sampling,
    denoise_step_full,
    step_noise,
)
from vllm_sdar.algorithm.logit_rules import LogitRules

REPO = Path(__file__).resolve().parent.parent
BEFORE = "a1bcd92"  # main just before issue 15's transforms
# Where decoding.py lived at a revision (the package was grouped by layer later).
DECODING_PATHS = ("vllm_sdar/algorithm/decoding.py", "vllm_sdar/decoding.py")


def old_decoding(rev: str) -> types.ModuleType:
    """The decoding module at git revision `rev`, imported under another name."""
    for path in DECODING_PATHS:
        shown = subprocess.run(
            ["git", "show", f"{rev}:{path}"], cwd=REPO, capture_output=True, text=True
        )
        if shown.returncode == 0:
            break
    else:
        raise FileNotFoundError(f"no decoding.py at {rev} (tried {DECODING_PATHS})")
    module = types.ModuleType("decoding_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    return module


def make_step(
    denoise: Callable[..., Any],
    logits: list[torch.Tensor],
    sampling: Sampling,
    denoising: Denoising,
    extra: tuple[Any, ...] = (),
    noise: Callable[[int, int, int], Any] = step_noise,
) -> Callable[[], None]:
    """One engine step's unmasking: every request's block, one call each.

    noise: the revision's seeded-noise factory (a torch generator before the
    batched step, a `StepNoise` since).
    """
    mask = logits[0].shape[-1] - 1  # the last id: MASK must be inside the vocabulary
    block = torch.full((denoising.block_size,), mask)

    def step() -> None:
        for i, rows in enumerate(logits):
            gen = None if sampling.greedy else noise(i, 0, 0)
            denoise(block, rows, mask, 0, denoising, sampling, gen, *extra)

    return step


def run(batch: int, vocab: int, rounds: int, before: str) -> dict[str, Any]:
    torch.manual_seed(0)
    B = 4
    denoising = Denoising(block_size=B, steps=B, strategy="low_confidence_static")
    logits = [torch.randn(B, vocab) * 3 for _ in range(batch)]
    old = old_decoding(before)
    old_denoising = old.Denoising(block_size=B, steps=B, strategy="low_confidence_static")
    rules = LogitRules(
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        min_p=0.05,
        logit_bias=((11, 2.0), (12, -5.0)),
        allowed_token_ids=tuple(range(0, vocab, 3)),
        bad_words=((5,), (6, 7)),
    )
    context = RuleContext(rules, generated=tuple(range(100, 400)), prompt=tuple(range(50)))
    results: dict[str, Any] = {}
    for mode, sampling in (("greedy", Sampling()), ("seeded", Sampling(0.8, 50, 0.9, seed=1))):
        old_sampling = old.Sampling(sampling.temperature, sampling.top_k, sampling.top_p, 1)
        variants = {
            "before": make_step(
                old.denoise_step,
                logits,
                old_sampling,
                old_denoising,
                noise=getattr(old, "step_noise", None) or old.step_generator,
            ),
            "after": make_step(denoise_step_full, logits, sampling, denoising),
            "after+options": make_step(
                denoise_step_full, logits, sampling, denoising, (context, 5, "raw_logprobs")
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for step in variants.values():  # warm-up
            step()
        for r in range(rounds):
            for name, step in variants.items():
                t0 = time.perf_counter()
                step()
                times[name].append((time.perf_counter() - t0) * 1000)
            log(f"sampling: {mode} round {r + 1}/{rounds}")
        results[mode] = {name: summary(ts) for name, ts in times.items()}
        base = results[mode]["before"]["median_ms"]
        for name in variants:
            results[mode][name]["vs_before"] = results[mode][name]["median_ms"] / base
    return results


def summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10) if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "n": len(ms)}


def table(results: dict[str, Any], batch: int, vocab: int) -> str:
    lines = [
        f"Unmasking step, {batch} requests x 4 masked rows x {vocab} vocab (ms per engine step)",
        "",
        "| sampling | variant | median | p10 | p90 | vs before |",
        "|---|---|---|---|---|---|",
    ]
    for mode, variants in results.items():
        for name, s in variants.items():
            lines.append(
                f"| {mode} | {name} | {s['median_ms']:.1f} | {s['p10_ms']:.1f} | "
                f"{s['p90_ms']:.1f} | {s['vs_before']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small vocab, few rounds (smoke)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    parser.add_argument(
        "--out", type=Path, default=None, help="write <out>/<date>-<machine>-sampling.json/.md"
    )
    args = parser.parse_args(argv)
    batch, vocab, rounds = (4, 4096, 3) if args.quick else (args.batch, 151936, args.rounds)
    torch.set_num_threads(1)
    results = run(batch, vocab, rounds, args.before)
    report = {
        "batch": batch,
        "vocab": vocab,
        "rounds": rounds,
        "before": args.before,
        "threads": 1,
        "results": results,
        "environment": describe(),
        "loadavg": loadavg(),
    }
    text = table(results, batch, vocab)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"{time.strftime('%Y-%m-%d')}-{machine_slug()}-sampling" + (
            "-quick" if args.quick else ""
        )
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"{stem}.md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()

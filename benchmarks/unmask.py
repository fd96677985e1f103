"""Batched vs per-request unmasking: one engine step's `sample_tokens` work.

Times what the runner does with the step's logits, for a batch of requests
each with a fully masked block (B = 4) of real-vocabulary logits:

- `before`: the per-request loop of the decoding module at --before
  (default: main before the batched step), read from git: for every
  request, a CPU generator and `denoise_step_full` on its rows;
- `after`: the working tree's `pack_step` + `denoise_batch` on the
  concatenated rows (in place, as the runner calls it), pack included.

Modes: greedy with low_confidence_dynamic 0.9; seeded sampling with
top-k 50 / top-p 0.9 (`seeded-topk`) and without filters (`seeded`). The
two variants are interleaved round by round (ABAB...), so machine load
drifts over both equally; medians and p10/p90 are reported.

    python -m benchmarks.unmask [--quick] [--out benchmarks/results]

Output: OUT/<date>-<machine>-unmask[-<modes>].json and .md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.harness.env import describe, loadavg, log
from benchmarks.harness.results import parser, publish, stem
from benchmarks.harness.timing import interleave, summary, timed_ms
from benchmarks.revision import decoding_at
from vllm_sdar.algorithm.decoding import (
    BlockStep,
    Denoising,
    Sampling,
    denoise_batch,
    pack_step,
    step_noise,
)

BEFORE = "53b8e4b"  # main with the per-request loop
B = 4
MODES: dict[str, tuple[Sampling, Denoising]] = {
    "greedy-dyn0.9": (Sampling(), Denoising(B, B, "low_confidence_dynamic", threshold=0.9)),
    "seeded-topk": (Sampling(0.8, 50, 0.9, seed=1), Denoising(B, B, "low_confidence_static")),
    "seeded": (Sampling(1.0, seed=1), Denoising(B, B, "low_confidence_static")),
}


def before_step(
    old: Any, logits: torch.Tensor, sampling: Sampling, denoising: Denoising
) -> Callable[[], None]:
    """The runner's old loop: one `denoise_step_full` per request."""
    mask = logits.shape[-1] - 1
    block = torch.full((B,), mask)
    old_sampling = old.Sampling(sampling.temperature, sampling.top_k, sampling.top_p, sampling.seed)
    old_denoising = old.Denoising(
        denoising.block_size, denoising.steps, denoising.strategy, denoising.threshold
    )
    requests = logits.shape[0] // B
    # A torch generator before the batched step, a StepNoise since.
    noise = getattr(old, "step_generator", None) or old.step_noise

    def step() -> None:
        for i in range(requests):
            gen = None if sampling.greedy else noise(i, 0, 0)
            old.denoise_step_full(
                block,
                logits[i * B : (i + 1) * B],
                mask,
                0,
                old_denoising,
                old_sampling,
                gen,
                output_rules=old.OutputRules(),
                first_output_pos=0,
            )

    return step


def after_step(
    logits: torch.Tensor, sampling: Sampling, denoising: Denoising
) -> Callable[[], None]:
    """The runner's new step: pack once, one batched call."""
    vocab = logits.shape[-1]
    mask = vocab - 1
    requests = logits.shape[0] // B

    def step() -> None:
        blocks = [
            BlockStep(
                [mask] * B,
                0,
                denoising,
                sampling,
                None if sampling.greedy else step_noise(i, 0, 0),
            )
            for i in range(requests)
        ]
        pack = pack_step(blocks, [B] * requests, mask, vocab)
        denoise_batch(logits, pack, inplace=True)

    return step


def run(
    batches: list[int], vocab: int, rounds: int, before: str, modes: list[str]
) -> dict[str, Any]:
    old = decoding_at(before)
    results: dict[str, Any] = {}
    for batch in batches:
        torch.manual_seed(batch)
        logits = torch.randn(batch * B, vocab) * 3
        for mode in modes:
            sampling, denoising = MODES[mode]
            variants = {
                "before": before_step(old, logits, sampling, denoising),
                "after": after_step(logits, sampling, denoising),
            }
            times = interleave(
                {name: timed_ms(step) for name, step in variants.items()}, rounds, warmup=True
            )
            entry = {name: summary(ts) for name, ts in times.items()}
            entry["after_vs_before"] = entry["after"]["median_ms"] / entry["before"]["median_ms"]
            results[f"{mode}/b{batch}"] = entry
            log(
                f"unmask: {mode} batch {batch}: before {entry['before']['median_ms']:.1f} ms, "
                f"after {entry['after']['median_ms']:.1f} ms"
            )
    return results


def table(results: dict[str, Any], vocab: int) -> str:
    lines = [
        f"Unmasking step, requests x {B} masked rows x {vocab} vocab (ms per engine step, "
        "medians; before = per-request loop, after = batched)",
        "",
        "| mode | batch | before | after | after / before | before p10-p90 | after p10-p90 |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, e in results.items():
        mode, batch = key.split("/b")
        b, a = e["before"], e["after"]
        lines.append(
            f"| {mode} | {batch} | {b['median_ms']:.1f} | {a['median_ms']:.1f} | "
            f"{e['after_vs_before']:.2f} | {b['p10_ms']:.1f}-{b['p90_ms']:.1f} | "
            f"{a['p10_ms']:.1f}-{a['p90_ms']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__, quick="small vocab, few rounds (smoke)")
    cli.add_argument("--batches", default="1,8,64,128")
    cli.add_argument("--rounds", type=int, default=7)
    cli.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of MODES")
    cli.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    args = cli.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    batches, vocab, rounds = ([1, 4], 4096, 3) if args.quick else (batches, 151936, args.rounds)
    torch.set_num_threads(1)
    results = run(batches, vocab, rounds, args.before, args.modes.split(","))
    report = {
        "block_size": B,
        "batches": batches,
        "vocab": vocab,
        "rounds": rounds,
        "before": args.before,
        "modes": args.modes.split(","),
        "threads": 1,
        "results": results,
        "environment": describe(),
        "loadavg": loadavg(),
    }
    text = table(results, vocab)
    print(text)
    name = stem("unmask", args.quick)
    if args.modes != ",".join(MODES):
        name += "-" + args.modes.replace(",", "+")
    return publish(report, args.out, name, text)


if __name__ == "__main__":
    main()

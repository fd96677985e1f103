"""Cost of the sampling-parity transforms on the unmasking step (issue 15).

    python -m benchmarks.sampling [--quick] [--rounds 20] [--out benchmarks/results]

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
reported. Output: OUT/<date>-<machine>-sampling.json and .md.
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
    Denoising,
    RuleContext,
    Sampling,
    denoise_step_full,
    step_noise,
)
from vllm_sdar.algorithm.logit_rules import LogitRules

BEFORE = "a1bcd92"  # main just before issue 15's transforms
B = 4


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


def every_transform(vocab: int) -> RuleContext:
    """Every transform at once, with a generated history and a prompt for the penalties."""
    rules = LogitRules(
        repetition_penalty=1.2,
        presence_penalty=0.5,
        frequency_penalty=0.3,
        min_p=0.05,
        logit_bias=((11, 2.0), (12, -5.0)),
        allowed_token_ids=tuple(range(0, vocab, 3)),
        bad_words=((5,), (6, 7)),
    )
    return RuleContext(rules, generated=tuple(range(100, 400)), prompt=tuple(range(50)))


def run(batch: int, vocab: int, rounds: int, before: str) -> dict[str, Any]:
    torch.manual_seed(0)
    denoising = Denoising(block_size=B, steps=B, strategy="low_confidence_static")
    logits = [torch.randn(B, vocab) * 3 for _ in range(batch)]
    old = decoding_at(before)
    old_denoising = old.Denoising(block_size=B, steps=B, strategy="low_confidence_static")
    old_noise = getattr(old, "step_noise", None) or old.step_generator
    context = every_transform(vocab)
    results: dict[str, Any] = {}
    for mode, sampling in (("greedy", Sampling()), ("seeded", Sampling(0.8, 50, 0.9, seed=1))):
        old_sampling = old.Sampling(sampling.temperature, sampling.top_k, sampling.top_p, 1)
        variants = {
            "before": make_step(
                old.denoise_step, logits, old_sampling, old_denoising, (), old_noise
            ),
            "after": make_step(denoise_step_full, logits, sampling, denoising),
            "after+options": make_step(
                denoise_step_full, logits, sampling, denoising, (context, 5, "raw_logprobs")
            ),
        }
        times = interleave(
            {name: timed_ms(step) for name, step in variants.items()},
            rounds,
            warmup=True,
            on_round=lambda r, mode=mode: log(f"sampling: {mode} round {r + 1}/{rounds}"),
        )
        results[mode] = {name: summary(ts) for name, ts in times.items()}
        base = results[mode]["before"]["median_ms"]
        for name in variants:
            results[mode][name]["vs_before"] = results[mode][name]["median_ms"] / base
    return results


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


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__, quick="small vocab, few rounds (smoke)")
    cli.add_argument("--batch", type=int, default=32)
    cli.add_argument("--rounds", type=int, default=15)
    cli.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    args = cli.parse_args(argv)
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
    return publish(report, args.out, stem("sampling", args.quick), text)


if __name__ == "__main__":
    main()

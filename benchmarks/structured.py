"""Cost of structured outputs on an engine step (issue 23).

    python -m benchmarks.structured --rounds 9   # the cited run (~4 min)
    python -m benchmarks.structured --quick      # smoke: small vocabulary, no engine

`step`: the runner's unmasking step on fully masked B = 4 blocks, without
(`plain`) and with every other (`half`) or every request (`all`) under a
grammar bitmask; `engine`: whole engine steps of a tiny model, requests of
DIGITS digits + EOS, plain or `regex`-constrained; interleaved rounds. (The
`before` column, the step's code at 6fbad46: results/ARCHIVE.md.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.engines import checkpoint, engine_core, new_llm, prompts, shutdown
from benchmarks.harness.results import interleave, md_table, study, summary

B = 4
VARIANTS = ("plain", "half", "all")
DIGITS = 15


def structured_of(variant: str, i: int) -> bool:
    return variant == "all" or (variant == "half" and i % 2 == 1)


def step_variants(batch: int, vocab: int) -> dict[str, Callable[[], float]]:
    import numpy as np
    import torch

    from vllm_sdar.algorithm import decoding as new

    torch.manual_seed(batch)
    logits = torch.randn(batch * B, vocab) * 3
    mask, rng = vocab - 1, np.random.default_rng(batch)

    def bitmask(allowed: np.ndarray) -> np.ndarray:
        bits = np.zeros((vocab + 31) // 32 * 32, dtype=np.uint8)
        bits[allowed] = 1
        return np.packbits(bits, bitorder="little").view(np.int32).copy()

    few = bitmask(rng.choice(vocab - 1, 10, replace=False))
    most = bitmask(np.setdiff1d(np.arange(vocab - 1), rng.choice(vocab - 1, 300, replace=False)))
    denoising = new.Denoising(B, B, "low_confidence_dynamic", threshold=0.9)

    def variant(name: str) -> Callable[[], float]:
        def run() -> float:
            work = logits.clone()  # the runner's own step tensor, written in place
            t0 = time.perf_counter()
            grammar = [(few if i % 4 < 2 else most) if structured_of(name, i) else None
                       for i in range(batch)]  # fmt: skip
            blocks = [new.BlockStep([mask] * B, 0, denoising, new.Sampling(), grammar_mask=g)
                      for g in grammar]  # fmt: skip
            new.denoise_batch(work, new.pack_step(blocks, [B] * batch, mask, vocab), inplace=True)
            return (time.perf_counter() - t0) * 1000

        return run

    return {name: variant(name) for name in VARIANTS}


def engine_variants(llm: Any, batch: int) -> dict[str, Callable[[], float]]:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    scheduler = engine_core(llm).scheduler
    inputs = [{"prompt_token_ids": p} for p in prompts(batch, 12)]
    options = {"remasking_strategy": "low_confidence_static"}

    def params(structured: bool) -> SamplingParams:
        if structured:
            regex = StructuredOutputsParams(regex=f"[0-9]{{{DIGITS}}}")
            return SamplingParams(temperature=0, max_tokens=DIGITS + 1, extra_args=options,
                                  structured_outputs=regex)  # fmt: skip
        return SamplingParams(temperature=0, max_tokens=DIGITS + 1, ignore_eos=True,
                              extra_args=options)  # fmt: skip

    def variant(name: str) -> Callable[[], float]:
        def run() -> float:
            ps = [params(structured_of(name, i)) for i in range(batch)]
            steps, original = [0], scheduler.schedule

            def counted(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                steps[0] += out.total_num_scheduled_tokens > 0
                return out

            scheduler.schedule = counted
            try:
                t0 = time.perf_counter()
                outs = llm.generate(inputs, ps, use_tqdm=False)
                ms = (time.perf_counter() - t0) * 1000
            finally:
                scheduler.schedule = original
            if any(len(o.outputs[0].token_ids) != DIGITS + 1 for o in outs):
                raise RuntimeError(f"{name}: a request did not decode {DIGITS + 1} tokens")
            return ms / steps[0]

        return run

    return {name: variant(name) for name in VARIANTS}


def body(args: Any, tmp: Path) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    if args.quick:
        batches, vocab, rounds, engine_batches = [1, 4], 4096, 3, []
    else:
        batches, vocab, rounds, engine_batches = [1, 8, 64], 151936, args.rounds, [1, 8, 32]
    results: dict[str, Any] = {}

    def measure(key: str, variants: dict[str, Callable[[], float]]) -> None:
        times = interleave(variants, rounds, warmup=True)
        results[key] = {name: summary(ts) for name, ts in times.items()}
        env.log(f"{key}: " + ", ".join(f"{n} {e['median_ms']:.2f} ms"
                                       for n, e in results[key].items()))  # fmt: skip

    for batch in batches:
        measure(f"step/b{batch}", step_variants(batch, vocab))
    if engine_batches:
        model = checkpoint("tiny-dense-b4", {})
        llm = new_llm(model, max_model_len=512, structured_outputs_config={"backend": "xgrammar"})
        try:
            for batch in engine_batches:
                measure(f"engine/b{batch}", engine_variants(llm, batch))
        finally:
            shutdown(llm)
    return {"block_size": B, "vocab": vocab, "rounds": rounds, "digits": DIGITS,
            "results": results, "loadavg": env.loadavg()}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    """Cells: p10 / median ms; ratios of p10s (the best decile is the
    steadier figure on a shared machine: load only ever adds time)."""
    rows = []
    for key, e in report["results"].items():
        p10 = {n: v["p10_ms"] for n, v in e.items()}
        cells = [f"{e[n]['p10_ms']:.2f} / {e[n]['median_ms']:.2f}" for n in VARIANTS]
        rows.append([*key.split("/b"), *cells, p10["half"] / p10["plain"],
                     p10["all"] / p10["plain"]])  # fmt: skip
    header = ["level", "batch", "plain", "half", "all"]
    return (
        f"Structured outputs: ms per engine step, p10 / median (step: unmasking only, {B} "
        f"masked rows x {report['vocab']} vocab per request; engine: whole steps, {DIGITS} "
        "digits + EOS each, one token per forward)\n\n"
        + md_table([*header, "half/plain", "all/plain"], rows)
    )


def main(argv: list[str] | None = None) -> Path:
    def options(cli: Any) -> None:
        cli.add_argument("--rounds", type=int, default=5)

    quick = "small vocabulary, few rounds, no engine (smoke)"
    return study(__doc__, "structured", quick, body, markdown, argv, options)


if __name__ == "__main__":
    main()

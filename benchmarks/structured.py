"""Cost of structured outputs on an engine step (issue 23).

    python -m benchmarks.structured [--quick] [--rounds 5] [--out benchmarks/results]

Two levels, each with three batches run in turn round by round (ABCABC...,
so machine load drifts over all alike), medians and p10/p90 reported:

- `step`: what the runner does with a step's logits (`pack_step` +
  `denoise_batch`, in place, as `unmask.py` times it): requests with a
  fully masked block of B = 4 real-vocabulary rows each. `before`: the
  packing and step modules at --before (git; the code before structured
  outputs) on the plain batch; `plain`: no structured request; `half`:
  every other request structured (its first masked slot drawn under a
  grammar bitmask and forced in the selection;
  the masks alternate between the two shapes real grammars give: a few
  ids allowed, as for digits or JSON punctuation, and all but a few, as
  inside a JSON string); `all`: every request structured.
- `engine`: a real in-process engine (tiny random-weight checkpoint with
  the real 151,936-token vocabulary, B = 4), a batch of requests that each
  decode L digits then EOS, low_confidence_static (one token per forward
  for every request, so every batch runs the same forwards): `plain`
  (ignore_eos, max_tokens L + 1), `half`, `all` (regex [0-9]{L}). Time per
  engine step, with the scheduler's grammar work (fill the bitmask,
  validate and accept) and the mask shipped in each plan.

A batch without structured requests runs the same code as before the
feature but for branch checks (`BlockStep.grammar_mask is None` per row,
an empty `StepPack.grammar_rows`) and a `structured_output_request is None`
check per request in the scheduler: `plain` is that path, `before` the
same batch on the old code.
Output: OUT/<date>-<machine>-structured[-quick].json and .md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness.env import configure, describe, loadavg, log
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, summary
from benchmarks.revision import REPO

B = 4
VARIANTS = ("plain", "half", "all")
BEFORE = "6fbad46"  # main before structured outputs


def step_code_at(rev: str) -> tuple[Any, Any]:
    """The packing and step modules at git revision `rev`, the old step
    importing the old packing and proposals (their other imports: today's
    modules, unchanged by the feature)."""
    import importlib
    import subprocess
    import sys
    import types

    modules: dict[str, types.ModuleType] = {}
    for name in ("packing", "proposals", "step"):
        source = subprocess.run(
            ["git", "show", f"{rev}:vllm_sdar/algorithm/{name}.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        module = types.ModuleType(f"{name}_before")
        module.__package__ = "vllm_sdar.algorithm"
        sys.modules[module.__name__] = module  # dataclasses look their module up
        # The old step imports the old packing and proposals; everything else
        # resolves to today's modules.
        swapped = {
            f"vllm_sdar.algorithm.{dep}": modules[dep]
            for dep in ("packing", "proposals")
            if name == "step"
        }
        today = {key: importlib.import_module(key) for key in swapped}
        sys.modules.update(swapped)
        try:
            exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
        finally:
            sys.modules.update(today)
        modules[name] = module
    return modules["packing"], modules["step"]


def structured_of(variant: str, i: int) -> bool:
    return variant == "all" or (variant == "half" and i % 2 == 1)


def step_variants(batch: int, vocab: int, before: str) -> dict[str, Callable[[], float]]:
    import time

    import numpy as np
    import torch

    from vllm_sdar.algorithm.decoding import (
        BlockStep,
        Denoising,
        Sampling,
        denoise_batch,
        pack_step,
    )

    torch.manual_seed(batch)
    logits = torch.randn(batch * B, vocab) * 3
    mask = vocab - 1
    rng = np.random.default_rng(batch)
    words = (vocab + 31) // 32

    def bitmask(allowed: np.ndarray) -> np.ndarray:
        bits = np.zeros(words * 32, dtype=np.uint8)
        bits[allowed] = 1
        return np.packbits(bits, bitorder="little").view(np.int32).copy()

    few = bitmask(rng.choice(vocab - 1, 10, replace=False))
    most = bitmask(np.setdiff1d(np.arange(vocab - 1), rng.choice(vocab - 1, 300, replace=False)))
    denoising = Denoising(B, B, "low_confidence_dynamic", threshold=0.9)
    old_packing, old_step = step_code_at(before)

    def old() -> float:
        work = logits.clone()
        t0 = time.perf_counter()
        blocks = [old_packing.BlockStep([mask] * B, 0, denoising, Sampling()) for _ in range(batch)]
        pack = old_packing.pack_step(blocks, [B] * batch, mask, vocab)
        old_step.denoise_batch(work, pack, inplace=True)
        return (time.perf_counter() - t0) * 1000

    def variant(name: str) -> Callable[[], float]:
        def run() -> float:
            work = logits.clone()  # the runner's own step tensor, written in place
            t0 = time.perf_counter()
            blocks = [
                BlockStep(
                    [mask] * B,
                    0,
                    denoising,
                    Sampling(),
                    grammar_mask=(few if i % 4 < 2 else most) if structured_of(name, i) else None,
                )
                for i in range(batch)
            ]
            denoise_batch(work, pack_step(blocks, [B] * batch, mask, vocab), inplace=True)
            return (time.perf_counter() - t0) * 1000

        return run

    return {"before": old} | {name: variant(name) for name in VARIANTS}


def engine_variants(llm: Any, batch: int, digits: int) -> dict[str, Callable[[], float]]:
    import time

    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from benchmarks.harness.engines import engine_core, prompts

    scheduler = engine_core(llm).scheduler
    batch_prompts = prompts(batch, 12)
    options = {"remasking_strategy": "low_confidence_static"}

    def params(structured: bool) -> SamplingParams:
        if structured:
            so = StructuredOutputsParams(regex=f"[0-9]{{{digits}}}")
            return SamplingParams(
                temperature=0, max_tokens=digits + 1, extra_args=options, structured_outputs=so
            )
        return SamplingParams(
            temperature=0, max_tokens=digits + 1, ignore_eos=True, extra_args=options
        )

    def variant(name: str) -> Callable[[], float]:
        def run() -> float:
            ps = [params(structured_of(name, i)) for i in range(batch)]
            steps = [0]
            original = scheduler.schedule

            def counted(*args: Any, **kwargs: Any) -> Any:
                out = original(*args, **kwargs)
                steps[0] += out.total_num_scheduled_tokens > 0
                return out

            scheduler.schedule = counted
            try:
                t0 = time.perf_counter()
                outs = llm.generate(
                    [{"prompt_token_ids": p} for p in batch_prompts], ps, use_tqdm=False
                )
                wall = time.perf_counter() - t0
            finally:
                scheduler.schedule = original
            if any(len(o.outputs[0].token_ids) != digits + 1 for o in outs):
                raise RuntimeError(f"{name}: a request did not decode {digits + 1} tokens")
            return wall * 1000 / steps[0]

        return run

    return {name: variant(name) for name in VARIANTS}


def run(
    batches: list[int],
    vocab: int,
    rounds: int,
    engine_batches: list[int],
    digits: int,
    before: str = BEFORE,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for batch in batches:
        times = interleave(step_variants(batch, vocab, before), rounds, warmup=True)
        results[f"step/b{batch}"] = entry = {name: summary(ts) for name, ts in times.items()}
        log(f"structured step b{batch}: " + _line(entry))
    if engine_batches:
        from benchmarks.harness.engines import shutdown
        from benchmarks.harness.models import BenchModel, checkpoint
        from vllm_sdar.tools.tiny import TinySpec

        model = checkpoint(BenchModel("tiny-dense-b4", TinySpec(), "Qwen3ForCausalLM"))
        from vllm import LLM

        llm = LLM(
            model=str(model),
            dtype="float32",
            enforce_eager=True,
            gpu_memory_utilization=0.5,
            max_model_len=512,
            seed=0,
            structured_outputs_config={"backend": "xgrammar"},
        )
        try:
            for batch in engine_batches:
                times = interleave(engine_variants(llm, batch, digits), rounds, warmup=True)
                results[f"engine/b{batch}"] = entry = {n: summary(ts) for n, ts in times.items()}
                log(f"structured engine b{batch}: " + _line(entry))
        finally:
            shutdown(llm)
    return results


def _line(entry: dict[str, Any]) -> str:
    return ", ".join(f"{n} {e['median_ms']:.2f} ms" for n, e in entry.items())


def table(results: dict[str, Any], vocab: int, digits: int) -> str:
    """Cells: p10 / median ms; ratios of p10s (the best decile is the
    steadier figure on a shared machine: load only ever adds time)."""
    rows = []
    for key, e in results.items():
        level, batch = key.split("/b")
        p10 = {n: v["p10_ms"] for n, v in e.items()}
        cells = [
            f"{e[n]['p10_ms']:.2f} / {e[n]['median_ms']:.2f}" if n in e else None
            for n in ("before", *VARIANTS)
        ]
        rows.append(
            [level, batch, *cells]
            + [p10["plain"] / p10["before"] if "before" in p10 else None]
            + [p10["half"] / p10["plain"], p10["all"] / p10["plain"]]
        )
    head = (
        f"Structured outputs: ms per engine step, p10 / median (step: unmasking only, {B} "
        f"masked rows x {vocab} vocab per request; engine: whole steps, {digits} digits + EOS "
        "each, one token per forward)\n\n"
    )
    header = ["level", "batch", "before", "plain", "half", "all", "plain/before"]
    header += ["half/plain", "all/plain"]
    return head + md_table(header, rows)


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__, quick="small vocabulary, few rounds, no engine (smoke)")
    cli.add_argument("--batches", default="1,8,64")
    cli.add_argument("--engine-batches", default="1,8,32")
    cli.add_argument("--digits", type=int, default=15)
    cli.add_argument("--rounds", type=int, default=5)
    cli.add_argument("--before", default=BEFORE, help="git revision of the 'before' code")
    args = cli.parse_args(argv)
    configure()
    import torch

    torch.set_num_threads(1)
    if args.quick:
        batches, vocab, rounds, engine_batches = [1, 4], 4096, 3, []
    else:
        batches, vocab, rounds = [int(b) for b in args.batches.split(",")], 151936, args.rounds
        engine_batches = [int(b) for b in args.engine_batches.split(",") if b]
    results = run(batches, vocab, rounds, engine_batches, args.digits, args.before)
    report = {
        "block_size": B,
        "vocab": vocab,
        "rounds": rounds,
        "digits": args.digits,
        "before": args.before,
        "threads": 1,
        "results": results,
        "environment": describe(),
        "loadavg": loadavg(),
    }
    text = table(results, vocab, args.digits)
    print(text)
    return publish(report, args.out, stem("structured", args.quick), text)


if __name__ == "__main__":
    main()

"""Phase "model": offline throughput/latency, overhead and synthetic TPF for one model.

    python -m benchmarks.offline --mode full --model dense-h256-l12 --out frag.json

One engine per (model, engine config) is shared by all cells: SDAR B=4,
SDAR B=16, then stock AR; the reference decoder runs last, in the same
process, once the engines are gone. Every measurement is one batch
submitted together through `LLM.generate` (ignore_eos, fixed max_tokens, so
every method emits exactly batch x output_len tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from benchmarks import env

env.configure()

from benchmarks.config import DYNAMIC, MODELS, Method, ModelPlan, Suite, methods_for, suite  # noqa: E402
from benchmarks.engine import (  # noqa: E402
    EngineSpec,
    prompts,
    sampling_params,
    shutdown,
    start,
    timed_generate,
    verify,
)
from benchmarks.models import checkpoint  # noqa: E402
from benchmarks.overhead import breakdown, instrument  # noqa: E402
from benchmarks.stats import cell_record  # noqa: E402


def max_model_len(plan: ModelPlan, prompt_len: int) -> int:
    longest = max(c.output_len for c in plan.cells)
    longest = max(longest, plan.overhead_output_len)
    need = prompt_len + longest + 2 * max(plan.block_sizes)
    return math.ceil(need / 128) * 128  # CPU KV page (128) multiple


def engine_specs(plan: ModelPlan, model_len: int) -> list[EngineSpec]:
    batch = max(max(c.batch for c in plan.cells), max(plan.overhead_batches, default=1))
    specs = [EngineSpec("sdar", b, model_len, max_num_seqs=batch) for b in plan.block_sizes]
    return specs + [EngineSpec("ar", None, model_len, max_num_seqs=batch)]


def _measure(
    llm: Any, batch: int, output_len: int, prompt_len: int, method: Method | None
) -> dict[str, Any]:
    run = timed_generate(
        llm,
        prompts(batch, prompt_len),
        sampling_params(output_len, method.sdar_options() if method else None),
    )
    total = sum(run.output_tokens)
    if any(n != output_len for n in run.output_tokens):
        raise RuntimeError(f"expected {output_len} tokens per request, got {run.output_tokens}")
    extra: dict[str, Any] = {"loadavg": env.loadavg()}
    if run.denoise_forwards is not None:
        forwards = sum(run.denoise_forwards)
        extra["denoise_forwards"] = forwards
        # SDAR plugin TPF = generated tokens / denoising forwards.
        extra["tpf"] = round(total / forwards, 4)
        # Kept per request (first few) to compare with the reference's counts.
        extra["denoise_forwards_per_request"] = run.denoise_forwards[:8]
    return cell_record(run.wall_s, run.completion_s, total, **extra)


def run_engine(
    llm: Any, spec: EngineSpec, plan: ModelPlan, suite_: Suite, out: dict[str, Any]
) -> None:
    name = plan.model.name
    # Warm-up: first-call costs (lazy inits, allocator growth) stay out of cells.
    warm = methods_for((spec.block_size,), (DYNAMIC,))[0] if spec.kind == "sdar" else None
    _measure(llm, 2, suite_.warmup_tokens, suite_.prompt_len, warm)
    for cell in plan.cells:
        if spec.kind == "sdar" and spec.block_size not in cell.block_sizes:
            continue
        methods: list[Method | None] = (
            list(cell.methods(spec.block_size)) if spec.kind == "sdar" else [None]
        )
        for method in methods:
            label = f"sdar-{method.name}" if method else "ar"
            env.log(f"{name} {label} batch={cell.batch} out={cell.output_len} ...")
            rec = _measure(llm, cell.batch, cell.output_len, suite_.prompt_len, method)
            rec.update(
                model=name,
                method=label,
                kind=spec.kind,
                block_size=spec.block_size,
                strategy=method.strategy if method else None,
                threshold=method.threshold if method else None,
                batch=cell.batch,
                output_len=cell.output_len,
            )
            env.log(
                f"  {rec['throughput_tok_s']:.1f} tok/s, wall {rec['wall_s']:.1f}s"
                + (f", TPF {rec['tpf']}" if "tpf" in rec else "")
            )
            out["cells"].append(rec)

    overhead_method = Method(4, DYNAMIC, 0.9) if spec.kind == "sdar" else None
    if spec.kind == "ar" or spec.block_size == 4:
        for batch in plan.overhead_batches:
            env.log(f"{name} overhead {spec.label} batch={batch}")
            with instrument(llm) as times:
                run = timed_generate(
                    llm,
                    prompts(batch, suite_.prompt_len, seed=99),
                    sampling_params(
                        plan.overhead_output_len,
                        overhead_method.sdar_options() if overhead_method else None,
                    ),
                )
            rec = breakdown(times)
            rec.update(
                model=name,
                method=f"sdar-{overhead_method.name}" if overhead_method else "ar",
                kind=spec.kind,
                batch=batch,
                output_len=plan.overhead_output_len,
                throughput_tok_s=round(sum(run.output_tokens) / run.wall_s, 3),
            )
            out["overhead"].append(rec)

    if spec.kind == "sdar" and spec.block_size == 4:
        for tau in plan.synthetic_thresholds:
            method = Method(4, DYNAMIC, tau)
            run = timed_generate(
                llm,
                prompts(8, suite_.prompt_len, seed=7),
                sampling_params(32, method.sdar_options()),
            )
            forwards = sum(run.denoise_forwards or [0])
            out["synthetic_tpf"].append(
                {
                    "model": name,
                    "block_size": 4,
                    "threshold": tau,
                    "tpf": round(sum(run.output_tokens) / forwards, 4) if forwards else None,
                }
            )


def run_reference(path: Path, plan: ModelPlan, suite_: Suite, out: dict[str, Any]) -> None:
    from vllm_sdar.algorithm.config import SdarOptions
    from vllm_sdar.algorithm.reference import ReferenceDecoder, Request

    name = plan.model.name
    for block in plan.block_sizes:
        decoder = ReferenceDecoder(path, block_size=block)
        cells = [c for c in plan.cells if block in c.block_sizes]
        for output_len in sorted({c.output_len for c in cells}):
            same_len = [c for c in cells if c.output_len == output_len]
            batches = sorted(c.batch for c in same_len)
            per_len = plan.reference_requests if output_len <= 128 else plan.reference_requests_long
            k = min(per_len, batches[-1])
            strategies = tuple(sorted({s for c in same_len for s in c.strategies}, reverse=True))
            for method in methods_for((block,), strategies):
                env.log(f"{name} reference {method.name} out={output_len}: {k} request(s)")
                times: list[float] = []
                forwards = denoise = tokens = 0
                per_request_denoise: list[int] = []
                request = Request(
                    max_tokens=output_len,
                    ignore_eos=True,
                    options=SdarOptions.parse(method.sdar_options()),
                )
                for prompt in prompts(k, suite_.prompt_len):
                    began = time.perf_counter()
                    result = decoder.generate_one(prompt, request)
                    times.append(time.perf_counter() - began)
                    forwards += result.num_forwards
                    denoise += result.num_denoise_forwards
                    tokens += len(result.token_ids)
                    per_request_denoise.append(result.num_denoise_forwards)
                per_request = sum(times) / len(times)
                for batch in batches:
                    cell = next(c for c in same_len if c.batch == batch)
                    if method.strategy not in cell.strategies:
                        continue
                    if batch <= k:  # measured: requests one after another
                        completion = [sum(times[: i + 1]) for i in range(batch)]
                    else:  # extrapolated from the measured per-request time
                        completion = [per_request * (i + 1) for i in range(batch)]
                    rec = cell_record(
                        completion[-1],
                        completion,
                        batch * output_len,
                        loadavg=env.loadavg(),
                        # Reference TPF = generated tokens / all forwards
                        # (prefill and commits included).
                        tpf=round(tokens / forwards, 4),
                        denoise_tpf=round(tokens / denoise, 4),
                        denoise_forwards_per_request=per_request_denoise,
                        measured_requests=min(k, batch),
                        extrapolated=batch > k,
                        seconds_per_request=round(per_request, 4),
                    )
                    rec.update(
                        model=name,
                        method=f"ref-{method.name}",
                        kind="reference",
                        block_size=block,
                        strategy=method.strategy,
                        threshold=method.threshold,
                        batch=batch,
                        output_len=output_len,
                    )
                    out["cells"].append(rec)
                env.log(f"  {per_request:.2f}s per request, TPF {tokens / forwards:.3f}")
        del decoder


def run(mode: str, model_name: str) -> dict[str, Any]:
    suite_ = suite(mode)
    plan = next(p for p in suite_.models if p.model.name == model_name)
    model = MODELS[model_name]
    env.log(f"building/loading checkpoint {model_name}")
    path = checkpoint(model)
    model_len = max_model_len(plan, suite_.prompt_len)
    out: dict[str, Any] = {
        "model": model.describe() | {"path": str(path)},
        "engines": {},
        "cells": [],
        "overhead": [],
        "synthetic_tpf": [],
    }
    for spec in engine_specs(plan, model_len):
        env.log(f"starting engine {model_name} {spec.label}")
        began = time.perf_counter()
        llm = start(path, spec, model.ar_architecture)
        info = verify(llm, spec)
        info["startup_s"] = round(time.perf_counter() - began, 1)
        info["max_model_len"] = model_len
        out["engines"][spec.label] = info
        env.log(f"  {info['scheduler']} / {info['model_runner']} ({info['startup_s']}s)")
        try:
            run_engine(llm, spec, plan, suite_, out)
        finally:
            shutdown(llm)
    import torch

    out["torch_threads"] = torch.get_num_threads()
    run_reference(path, plan, suite_, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["quick", "full"], required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run(args.mode, args.model)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

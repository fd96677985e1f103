"""Several denoising steps per engine iteration: throughput vs latency, by k.

    python -m benchmarks.inner_steps            # both trained pairs b1/8/64, 0.6B shape b1/8
    python -m benchmarks.inner_steps --quick    # smoke: sdar-addition, batch 2, 1 round

Per model, engines each in a worker process of its own, timed interleaved
round by round: "ar" (stock vLLM: for a trained toy its own AR parent
`ar-<task>`, as in benchmarks.trained; for the random-weight shape the
same weights decoded as Qwen3) and the plugin with `steps_per_iteration`
k = 1, 2 and "block" (`--hf-overrides`). Each measurement submits a batch of requests
together (greedy; the trained toys decode as served, dynamic 0.9, and stop
at EOS; the random-weight 0.6B shape runs low_confidence_static with
ignore_eos, so every block takes exactly B steps), drives `LLMEngine.step()`
until all finish, and records per request the time to its first output
token and to its last. "Batch b" = the problems submitted b at a time, one
group after another. Reported per engine: tokens/s, mean request latency,
mean time to first token, engine iterations and denoising forwards; the
medians over rounds. All SDAR variants must produce the same tokens
(checked every round): k changes when tokens are computed, never which.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.models import model_dir as bench_model_dir
from benchmarks.harness.models import problem_prompts
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, ratio
from benchmarks.harness.workers import Worker

FACTORY = "benchmarks.inner_steps:IterationTimedEngine"
K_VALUES: tuple[int | str, ...] = (1, 2, "block")


@dataclass(frozen=True)
class Case:
    model: str  # a shipped SDAR asset or a benchmarks.shapes_models name
    batch: int
    problems: int  # requests per measurement, submitted `batch` at a time
    rounds: int
    max_tokens: int | None = None  # None: the trained task's own budget
    strategy: str = "low_confidence_dynamic"
    k_values: tuple[int | str, ...] = K_VALUES


SHAPE = "qwen3-0.6b-shape"
FULL = [
    Case("sdar-addition", 1, 24, 5),
    Case("sdar-addition", 8, 64, 5),
    Case("sdar-addition", 64, 64, 5),
    Case("sdar-sort", 1, 8, 5),
    Case("sdar-sort", 8, 32, 5),
    Case("sdar-sort", 64, 64, 3),
    # Four 0.75B fp32 engines do not fit beside other work in 23 GB: k = 2
    # is left out there (static: every block takes B steps, so "block" = 4).
    Case(SHAPE, 1, 1, 3, 8, "low_confidence_static", (1, "block")),
    Case(SHAPE, 8, 8, 2, 8, "low_confidence_static", (1, "block")),
]
QUICK = [Case("sdar-addition", 2, 4, 1, k_values=(1, "block"))]


class IterationTimedEngine:
    """One engine in a worker process; `measure` runs the problems in batches."""

    def __init__(
        self, model_dir: str, kind: str, strategy: str, steps_per_iteration: int | str
    ) -> None:
        import torch

        from benchmarks.harness.engines import EngineSpec, engine_core, start_verified

        torch.set_num_threads(env.threads())
        spec = EngineSpec(kind, max_model_len=256, steps_per_iteration=steps_per_iteration)
        self.llm, self.info = start_verified(Path(model_dir), spec, "Qwen3ForCausalLM")
        self.options = {"remasking_strategy": strategy} if kind == "sdar" else None
        if kind == "sdar" and strategy == "low_confidence_dynamic":
            self.options = {**self.options, "confidence_threshold": 0.9}
        self.scheduler = engine_core(self.llm).scheduler

    def measure(
        self, prompts: list[list[int]], batch: int, max_tokens: int, ignore_eos: bool
    ) -> dict[str, Any]:
        from vllm.sampling_params import RequestOutputKind

        from benchmarks.harness.engines import sampling_params

        params = sampling_params(
            max_tokens, self.options, ignore_eos=ignore_eos, output_kind=RequestOutputKind.DELTA
        )
        engine = self.llm.llm_engine
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        tokens: dict[str, list[int]] = {}
        forwards = 0
        iterations = 0
        wall = 0.0
        for g in range(0, len(prompts), batch):
            ids = [f"r{i}" for i in range(g, min(g + batch, len(prompts)))]
            began = time.perf_counter()
            for rid, p in zip(ids, prompts[g : g + batch], strict=True):
                engine.add_request(rid, {"prompt_token_ids": p}, params)
                tokens[rid] = []
            while engine.has_unfinished_requests():
                outs = engine.step()
                iterations += 1
                now = time.perf_counter() - began
                for out in outs:
                    completion = out.outputs[0]
                    if completion.token_ids:
                        first.setdefault(out.request_id, now)
                        tokens[out.request_id] += completion.token_ids
                    if out.finished:
                        last[out.request_id] = now
                        metrics = completion.spec_decode_metrics
                        forwards += int(sum(metrics.histogram)) if metrics is not None else 0
            wall += time.perf_counter() - began
        n_tokens = sum(len(t) for t in tokens.values())
        return {
            "wall_s": wall,
            "tokens": n_tokens,
            "tok_s": n_tokens / wall,
            "latency_mean_s": statistics.mean(last.values()),
            "ttft_mean_s": statistics.mean(first.values()),
            "iterations": iterations,
            "forwards": forwards,
            "digest": hash(tuple(tuple(tokens[r]) for r in sorted(tokens))),
        }

    def close(self) -> None:
        from benchmarks.harness.engines import shutdown

        shutdown(self.llm)


def _label(k: int | str | None) -> str:
    return "ar" if k is None else f"sdar-k{k}"


def run_case(case: Case, tmp: Path) -> dict[str, Any]:
    model_dir = bench_model_dir(case.model)
    prompts = problem_prompts(model_dir, case.problems)
    trained = (model_dir / "eval.json").exists()
    if case.max_tokens is not None:
        max_tokens = case.max_tokens
    else:
        from vllm_sdar.convert.toy import trained_task

        max_tokens = trained_task(model_dir).max_tokens
    proc_env = {**os.environ, **env.preload_env(False), "VLLM_CPU_KVCACHE_SPACE": "1"}
    variants: list[int | str | None] = [None, *case.k_values]
    workers: dict[str, Worker] = {}
    # A trained toy's baseline is its AR parent (same held-out problems).
    ar_dir = model_dir.parent / model_dir.name.replace("sdar-", "ar-", 1) if trained else model_dir
    try:
        for k in variants:
            label = _label(k)
            env.log(f"loading {case.model} ({label})")
            kwargs = dict(
                model_dir=str(model_dir if k is not None else ar_dir),
                kind="ar" if k is None else "sdar",
                strategy=case.strategy,
                steps_per_iteration=1 if k is None else k,
            )
            control = tmp / f"{case.model}-{case.batch}-{label}"
            workers[label] = Worker(FACTORY, kwargs, proc_env, control, label)
        call = dict(
            prompts=prompts, batch=case.batch, max_tokens=max_tokens, ignore_eos=not trained
        )
        runs = interleave(
            {label: partial(w.measure, **call) for label, w in workers.items()},
            case.rounds,
            warmup=True,
            on_round=lambda r: env.log(f"{case.model} batch {case.batch}: round {r + 1}"),
        )
    finally:
        for w in workers.values():
            w.close()
    sdar_digests = {r["digest"] for label, rs in runs.items() if label != "ar" for r in rs}
    if len(sdar_digests) != 1:
        raise RuntimeError(f"{case.model} batch {case.batch}: SDAR variants' tokens differ")
    cells = {}
    for label, per_round in runs.items():
        cells[label] = {
            key: statistics.median(r[key] for r in per_round)
            for key in ("tok_s", "latency_mean_s", "ttft_mean_s", "wall_s")
        } | {key: per_round[0][key] for key in ("tokens", "iterations", "forwards")}
    env.log(f"{case.model} batch {case.batch}: {json.dumps(cells)}")
    return {**asdict(case), "max_tokens": max_tokens, "cells": cells, "load": env.loadavg()}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for case in results["cases"]:
        cells = case["cells"]
        ar, k1 = cells["ar"], cells.get("sdar-k1")
        for label, c in cells.items():
            rows.append(
                [case["model"], case["batch"], label, round(c["tok_s"], 1),
                 ratio(c["tok_s"], ar["tok_s"]),
                 ratio(c["tok_s"], k1["tok_s"]) if k1 else None,
                 round(1000 * c["latency_mean_s"], 1), round(1000 * c["ttft_mean_s"], 1),
                 c["iterations"], c["forwards"] or "", c["tokens"]]
            )  # fmt: skip
    header = [
        "model", "batch", "engine", "tokens/s", "vs AR", "vs k=1", "latency ms (mean)",
        "TTFT ms (mean)", "iterations", "denoising forwards", "tokens",
    ]  # fmt: skip
    machine = results["machine"]
    return (
        f"# Denoising steps per engine iteration ({machine['cpu']}, {machine['cores']} cores, "
        f"{results['threads']} thread per engine; medians over interleaved rounds)\n\n"
        + md_table(header, rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, quick="sdar-addition, batch 2, 1 round (smoke)").parse_args(argv)
    env.configure()
    cases = QUICK if args.quick else FULL
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdar-bench-inner-") as tmp:
        done = [run_case(case, Path(tmp)) for case in cases]
    results = {
        "study": "inner_steps",
        "command": "python -m benchmarks.inner_steps" + (" --quick" if args.quick else ""),
        "machine": env.describe(),
        "threads": env.threads(),
        "cases": done,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    publish(results, args.out, stem("inner-steps", args.quick), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

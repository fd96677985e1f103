"""LoRA: SDAR engine step time with adapter requests vs without, in one run.

    python -m benchmarks.lora            # sdar-addition + its adapter; 0.6B-shaped + random
    python -m benchmarks.lora --quick    # smoke: tiny random model + random adapter

Per model, two engines, each in a worker process of its own, timed
interleaved round by round (ABAB...):
- "LoRA off": the plain SDAR engine;
- "LoRA on": `enable_lora`, max_loras 1, max_lora_rank 16, serving the
  same batch as base-model requests only, as adapter requests only, and
  half and half (alternating);
- "LoRA on, targets": the same with `lora_target_modules` = the adapter's
  own modules, so vLLM leaves the lm_head unwrapped (by default it wraps
  it, and its CPU kernel then gathers a [vocab, rank] matrix per logits
  row every step, whether or not any adapter has lm_head weights).
Every measurement submits one batch of `batch` requests together: greedy,
`low_confidence_static` (a fixed number of denoising steps per block, so
every variant runs the same engine steps), `ignore_eos`, fixed max_tokens.
Step time = wall time of `LLM.llm_engine.step()` (schedule + forward +
unmasking + bookkeeping); reported: the median over all steps of all
rounds, and the batch's wall time.
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
from benchmarks.harness.timing import interleave
from benchmarks.harness.workers import Worker

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "vllm_sdar" / "assets"
STEP_TIMER = "benchmarks.lora:LoraEngine"
ENGINES = ("lora-off", "lora-on", "lora-targets")  # lora-off first: the reference
VARIANTS = ("base", "adapter", "mixed")  # on the LoRA engines; "base" alone on lora-off


@dataclass(frozen=True)
class Case:
    model: str  # a shipped asset name or a benchmarks.shapes_models name
    adapter: str  # a shipped adapter name, or "random" (built here, rank 16)
    batch: int
    max_tokens: int
    rounds: int
    engines: tuple[str, ...] = ENGINES


# The 0.6B-shaped model runs at most two engines at a time: three 0.75B fp32
# engines (~5 GB each) do not fit beside other work in this machine's 23 GB.
# The tiny model shows all three (same 151,936-token vocabulary).
FULL = [
    Case("sdar-addition", "lora-subtraction", 1, 8, 20),
    Case("sdar-addition", "lora-subtraction", 16, 8, 10),
    Case("tiny-dense", "random", 8, 16, 8),
    Case("qwen3-0.6b-shape", "random", 1, 16, 5, ("lora-on",)),
    Case("qwen3-0.6b-shape", "random", 8, 16, 4, ("lora-on",)),
    Case("qwen3-0.6b-shape", "random", 8, 16, 3, ("lora-off", "lora-targets")),
]
QUICK = [Case("tiny-dense", "random", 2, 8, 2)]
RANK = 16



def _adapter_dir(case: Case, model_dir: Path, tmp: Path) -> Path:
    if case.adapter != "random":
        return ASSETS / case.adapter
    from vllm_sdar.convert.lora import random_adapter

    out = tmp / f"{case.model}-adapter"
    if not (out / "adapter_config.json").exists():
        env.log(f"building a random rank-{RANK} adapter for {case.model}")
        random_adapter(model_dir, out, rank=RANK, alpha=RANK, seed=0, std=0.02)
    return out



class LoraEngine:
    """One SDAR engine in a worker process; `measure(variant)` times one batch."""

    def __init__(
        self,
        model_dir: str,
        adapter_dir: str,
        engine: str,
        batch: int,
        max_tokens: int,
    ) -> None:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        kwargs: dict[str, Any] = dict(
            model=model_dir,
            dtype="float32",
            enforce_eager=True,
            gpu_memory_utilization=0.5,
            max_model_len=256,
            max_num_seqs=batch,
            seed=0,
        )
        if engine != "lora-off":
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=RANK)
        if engine == "lora-targets":
            config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
            kwargs["lora_target_modules"] = sorted(config["target_modules"])
        self.llm = LLM(**kwargs)
        self.lora = LoRARequest("adapter", 1, adapter_dir)
        self.prompts = [{"prompt_token_ids": p} for p in problem_prompts(Path(model_dir), batch)]
        self.params = SamplingParams(
            temperature=0.0,
            max_tokens=max_tokens,
            ignore_eos=True,
            extra_args={"remasking_strategy": "low_confidence_static"},
        )
        self.info = {"engine": engine, "threads": env.threads()}

    def measure(self, variant: str) -> dict[str, Any]:
        n = len(self.prompts)
        loras = {
            "base": [None] * n,
            "adapter": [self.lora] * n,
            "mixed": [self.lora if i % 2 else None for i in range(n)],
        }[variant]
        engine = self.llm.llm_engine
        original = engine.step
        steps: list[float] = []

        def step() -> Any:
            t0 = time.perf_counter()
            out = original()
            steps.append((time.perf_counter() - t0) * 1000)
            return out

        engine.step = step  # an instance attribute shadows the class method
        t0 = time.perf_counter()
        try:
            outs = self.llm.generate(self.prompts, self.params, lora_request=loras, use_tqdm=False)
        finally:
            del engine.step
        wall = (time.perf_counter() - t0) * 1000
        return {
            "steps_ms": steps,
            "wall_ms": wall,
            "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        }

    def close(self) -> None:
        from benchmarks.harness.engines import shutdown

        shutdown(self.llm)


def run_case(case: Case, tmp: Path) -> dict[str, Any]:
    model_dir = bench_model_dir(case.model)
    adapter = _adapter_dir(case, model_dir, tmp)
    # 1 GiB of KV per engine is plenty here (batch <= 16, 256 tokens).
    proc_env = {**os.environ, **env.preload_env(False), "VLLM_CPU_KVCACHE_SPACE": "1"}
    workers: dict[str, Worker] = {}
    try:
        for label in case.engines:
            env.log(f"loading {case.model} ({label}, batch {case.batch})")
            kwargs = dict(
                model_dir=str(model_dir),
                adapter_dir=str(adapter),
                engine=label,
                batch=case.batch,
                max_tokens=case.max_tokens,
            )
            control = tmp / f"{case.model}-{case.batch}-{label}"
            workers[label] = Worker(STEP_TIMER, kwargs, proc_env, control, label)
        calls = {
            (label, v): partial(workers[label].measure, variant=v)
            for label in case.engines
            for v in (("base",) if label == "lora-off" else VARIANTS)
        }
        runs = interleave(calls, case.rounds, warmup=True)
    finally:
        for w in workers.values():
            w.close()
    cells = {}
    for (engine, variant), per_round in runs.items():
        steps = [s for r in per_round for s in r["steps_ms"]]
        cells[f"{engine}/{variant}"] = {
            "step_ms_median": statistics.median(steps),
            "steps_per_batch": len(per_round[0]["steps_ms"]),
            "batch_ms_median": statistics.median(r["wall_ms"] for r in per_round),
            "tokens_per_batch": per_round[0]["tokens"],
        }
    env.log(f"{case.model} batch {case.batch}: {json.dumps(cells)}")
    return {**asdict(case), "adapter_dir": str(adapter), "cells": cells, "load": env.loadavg()}


ENGINE_LABELS = {
    "lora-off": "LoRA off",
    "lora-on": "LoRA on",
    "lora-targets": "LoRA on, adapter's targets (no lm_head)",
}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for case in results["cases"]:
        cells = case["cells"]
        off = cells.get("lora-off/base", {}).get("step_ms_median")
        for key, cell in cells.items():
            engine, variant = key.split("/")
            if variant == "mixed" and case["batch"] == 1:
                continue  # one request: "half and half" is the base request
            requests = {"base": "base model", "adapter": "adapter", "mixed": "half/half"}[variant]
            rows.append(
                [
                    f"{case['model']} + {case['adapter']}",
                    case["batch"],
                    ENGINE_LABELS[engine],
                    requests,
                    cell["step_ms_median"],
                    cell["step_ms_median"] / off if off else None,
                    cell["step_ms_median"] / cells[f"{engine}/base"]["step_ms_median"],
                    cell["steps_per_batch"],
                    cell["batch_ms_median"],
                ]
            )
    header = [
        "model + adapter", "batch", "engine", "requests", "step ms (median)",
        "vs LoRA off", "vs same engine, base requests", "steps / batch", "batch ms (median)",
    ]  # fmt: skip
    machine = results["machine"]
    return (
        f"# LoRA step time ({machine['cpu']}, {machine['cores']} cores, "
        f"{results['threads']} thread per engine)\n\n" + md_table(header, rows) + "\n"
    )


def _key(case: Case) -> dict[str, Any]:
    """The case's fields as its results record them (JSON: tuples are lists)."""
    return json.loads(json.dumps(asdict(case)))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, quick="tiny random model, 2 rounds (smoke)")
    args = p.parse_args(argv)
    env.configure()
    cases = QUICK if args.quick else FULL
    name = stem("lora", args.quick)
    # Each finished case is kept in a partial file: a run stopped midway
    # (the machine is shared) resumes with the cases still missing.
    partial = args.out / f"{name}.partial.json"
    done: list[dict[str, Any]] = json.loads(partial.read_text()) if partial.exists() else []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdar-bench-lora-") as tmp:
        for case in cases:
            if any(d | _key(case) == d for d in done):
                continue
            done.append(json.loads(json.dumps(run_case(case, Path(tmp)))))
            args.out.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(done, indent=2) + "\n")
    order = [_key(c) for c in cases]
    done.sort(key=lambda d: next(i for i, c in enumerate(order) if d | c == d))
    results = {
        "study": "lora",
        "machine": env.describe(),
        "threads": env.threads(),
        "cases": done,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    publish(results, args.out, name, markdown(results))
    partial.unlink(missing_ok=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

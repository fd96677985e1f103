"""LoRA: SDAR engine step time with adapter requests vs without, in one run.

    python -m benchmarks.lora            # sdar-addition + its adapter; 0.6B-shaped + random
    python -m benchmarks.lora --quick    # smoke: tiny random model + random adapter

ENGINES each in a worker, timed interleaved, serving one batch of base,
adapter or half/half requests (greedy, static, fixed length); step time is
`LLM.llm_engine.step()`'s. A stopped run resumes from its .partial.json.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import engines, env
from benchmarks.harness.results import interleave, report, study
from benchmarks.harness.workers import pool

ENGINES = {  # lora-off first: the reference. lora-targets: `lora_target_modules` = the adapter's
    # own modules: vLLM leaves the lm_head unwrapped (wrapped, its CPU kernel gathers a [vocab,
    # rank] matrix per logits row every step).
    "lora-off": "LoRA off",
    "lora-on": "LoRA on",  # enable_lora, max_loras 1, max_lora_rank RANK
    "lora-targets": "LoRA on, adapter's targets (no lm_head)",
}
VARIANTS = ("base", "adapter", "mixed")  # on the LoRA engines; "base" alone on lora-off
RANK = 16


@dataclass(frozen=True)
class Case:
    model: str  # a shipped asset or a harness.engines.MODELS name
    adapter: str  # a shipped adapter name, or "random" (built here, rank 16)
    batch: int
    max_tokens: int
    rounds: int
    engines: tuple[str, ...] = tuple(ENGINES)


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


class LoraEngine(engines.EngineWorker):
    """One SDAR engine in a worker process; `measure(variant)` times one batch."""

    def __init__(
        self, model: str, adapter_dir: str, engine: str, batch: int, max_tokens: int
    ) -> None:
        from vllm.lora.request import LoRARequest

        kwargs: dict[str, Any] = dict(max_model_len=256, max_num_seqs=batch)
        if engine != "lora-off":
            kwargs.update(enable_lora=True, max_loras=1, max_lora_rank=RANK)
        if engine == "lora-targets":
            config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
            kwargs["lora_target_modules"] = sorted(config["target_modules"])
        self.llm = engines.new_llm(model, **kwargs)
        self.lora = LoRARequest("adapter", 1, adapter_dir)
        self.prompts = engines.problem_prompts(Path(model), batch)
        static = {"remasking_strategy": "low_confidence_static"}
        self.params = engines.sampling_params(max_tokens, static)
        self.info = {"engine": engine, "threads": env.threads()}

    def measure(self, variant: str) -> dict[str, Any]:
        n = len(self.prompts)
        loras = {"base": [None] * n, "adapter": [self.lora] * n,
                 "mixed": [self.lora if i % 2 else None for i in range(n)]}[variant]  # fmt: skip
        run = engines.timed_generate(self.llm, self.prompts, self.params, lora_request=loras)
        return {"steps_ms": run.steps_ms, "wall_ms": 1000 * run.wall_s,
                "tokens": sum(run.output_tokens)}  # fmt: skip


def run_case(case: Case, tmp: Path) -> dict[str, Any]:
    model = engines.model_dir(case.model)
    adapter = engines.ASSETS / case.adapter
    if case.adapter == "random":
        from vllm_sdar.convert.lora import random_adapter

        adapter = tmp / f"{case.model}-adapter"
        if not (adapter / "adapter_config.json").exists():
            env.log(f"building a random rank-{RANK} adapter for {case.model}")
            random_adapter(model, adapter, rank=RANK, alpha=RANK, seed=0, std=0.02)
    kwargs = {label: dict(model=str(model), adapter_dir=str(adapter), engine=label,
                          batch=case.batch, max_tokens=case.max_tokens)
              for label in case.engines}  # fmt: skip
    with pool("benchmarks.lora:LoraEngine", kwargs, tmp / f"{case.model}-{case.batch}") as workers:
        calls = {(label, v): partial(w.measure, variant=v) for label, w in workers.items()
                 for v in (("base",) if label == "lora-off" else VARIANTS)}  # fmt: skip
        runs = interleave(calls, case.rounds, warmup=True)
    cells = {}
    for (engine, variant), per_round in runs.items():
        cells[f"{engine}/{variant}"] = {
            "step_ms_median": statistics.median(s for r in per_round for s in r["steps_ms"]),
            "steps_per_batch": len(per_round[0]["steps_ms"]),
            "batch_ms_median": statistics.median(r["wall_ms"] for r in per_round),
            "tokens_per_batch": per_round[0]["tokens"],
        }
    env.log(f"{case.model} batch {case.batch}: {json.dumps(cells)}")
    return {**asdict(case), "adapter_dir": str(adapter), "cells": cells, "load": env.loadavg()}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for case in results["cases"]:
        cells = case["cells"]
        off = cells.get("lora-off/base", {}).get("step_ms_median")
        for key, cell in cells.items():
            engine, variant = key.split("/")
            if variant == "mixed" and case["batch"] == 1:
                continue  # one request: "half and half" is the base request
            step, base = cell["step_ms_median"], cells[f"{engine}/base"]["step_ms_median"]
            rows.append(
                [f"{case['model']} + {case['adapter']}", case["batch"], ENGINES[engine],
                 {"base": "base model", "adapter": "adapter", "mixed": "half/half"}[variant],
                 step, step / off if off else None, step / base, cell["steps_per_batch"],
                 cell["batch_ms_median"]]
            )  # fmt: skip
    header = [
        "model + adapter", "batch", "engine", "requests", "step ms (median)",
        "vs LoRA off", "vs same engine, base requests", "steps / batch", "batch ms (median)",
    ]  # fmt: skip
    return report("LoRA step time", results, header, rows)


def body(args: Any, tmp: Path) -> dict[str, Any]:
    # Each finished case is kept in a partial file: a run stopped midway
    # (the machine is shared) resumes with the cases still missing.
    partial_file = args.out / f"{args.stem}.partial.json"
    done = json.loads(partial_file.read_text()) if partial_file.exists() else []
    cases = QUICK if args.quick else FULL
    keys = [json.loads(json.dumps(asdict(c))) for c in cases]  # as the JSON records them
    for case, key in zip(cases, keys):
        if not any(d | key == d for d in done):
            done.append(json.loads(json.dumps(run_case(case, tmp))))
            args.out.mkdir(parents=True, exist_ok=True)
            partial_file.write_text(json.dumps(done, indent=2) + "\n")
    done.sort(key=lambda d: next(i for i, k in enumerate(keys) if d | k == d))
    return {"study": "lora", "cases": done}


def main(argv: list[str] | None = None) -> Path:
    path = study(__doc__, "lora", "tiny random model, 2 rounds (smoke)", body, markdown, argv)
    path.with_name(f"{path.stem}.partial.json").unlink(missing_ok=True)
    return path


if __name__ == "__main__":
    main()

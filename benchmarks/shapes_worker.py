"""One `benchmarks.shapes` engine, kept loaded in a worker process.

`StepTimer` is the harness worker's factory: it starts one engine (AR or
SDAR B, one dtype), wraps its step and its runner's `execute_model`, and
times every engine step of one batch per call. Steps are classified by
query tokens per request:

- AR: a decode step of a full batch (1 token per request);
- SDAR B (`low_confidence_static`, 2 denoising steps per block):
  `all_masked` (the previous block's commit rides along: 2B tokens) and
  `after_first` (B tokens). The step that prefills the prompt, and partial
  steps (some requests already finished), are not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

PROMPT_LEN = 32  # a multiple of every block size measured: no prompt tail


@dataclass(frozen=True)
class Job:
    """One engine in its own process, measured interleaved with its group."""

    model: str
    dtype: str
    kind: str  # "ar" | "sdar"
    block_size: int | None
    batches: tuple[int, ...]
    group: int = 0  # engines compared with each other, measured in turn
    blocks: int = 3  # SDAR output = blocks x B tokens; AR output = 6 tokens
    preload: bool = True
    kv_cache_gib: int = 2

    @property
    def label(self) -> str:
        engine = "ar" if self.kind == "ar" else f"sdar-b{self.block_size}"
        return f"{self.model}/{self.dtype}/{engine}" + ("" if self.preload else "/no-preload")


def classify(job: Job, tokens_per_req: float) -> str | None:
    if job.kind == "ar":
        return "decode" if tokens_per_req == 1 else None
    b = job.block_size
    assert b is not None
    return {2 * b: "all_masked", b: "after_first"}.get(int(tokens_per_req))


class StepTimer:
    """One engine, kept loaded; times every engine step of a batch on request."""

    def __init__(self, **fields: Any) -> None:
        from benchmarks.harness import env
        from benchmarks.harness.engines import (
            EngineSpec,
            engine_core,
            runner_of,
            sampling_params,
            start_verified,
        )
        from benchmarks.harness.models import checkpoint
        from benchmarks.shapes_models import MODELS

        job = self.job = Job(**{**fields, "batches": tuple(fields["batches"])})
        model = MODELS[job.model]
        spec = EngineSpec(
            job.kind,
            job.block_size,
            max_model_len=512,
            max_num_seqs=max(job.batches),
            max_num_batched_tokens=max(8192, max(job.batches) * (PROMPT_LEN + 16)),
            dtype=job.dtype,
        )
        self.llm, self.info = start_verified(checkpoint(model), spec, model.ar_architecture)
        env.log(f"{job.label}: engine up in {self.info['startup_s']:.0f}s")
        self.steps: list[dict[str, Any]] = []
        self._instrument(engine_core(self.llm), runner_of(self.llm), model.spec)
        if job.kind == "sdar":
            options = {"remasking_strategy": "low_confidence_static", "denoising_steps": 2}
            max_tokens = job.blocks * (job.block_size or 1)
        else:
            options, max_tokens = None, 6
        self.params = sampling_params(max_tokens, options)
        self.measure(1)  # warm-up

    def _instrument(self, core: Any, runner: Any, spec: Any) -> None:
        """Time each engine step and its execute_model; record tokens, rows, experts."""
        original_step, original_execute = core.step_fn, runner.execute_model
        experts_seen: list[int] = []  # distinct experts per MoE layer call, this step

        def execute(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            start_t = time.perf_counter()
            out = original_execute(scheduler_output, *args, **kwargs)
            reqs = len(scheduler_output.num_scheduled_tokens)
            rows = sum(c for _, c in runner._sdar_rows) if hasattr(runner, "_sdar_rows") else reqs
            layers = experts_seen[:]
            experts_seen.clear()
            self.steps.append(
                {
                    "experts_per_layer": statistics.mean(layers) if layers else None,
                    "tokens": scheduler_output.total_num_scheduled_tokens,
                    "requests": reqs,
                    "logit_rows": rows,
                    "execute_s": time.perf_counter() - start_t,
                }
            )
            return out

        def step(*args: Any, **kwargs: Any) -> Any:
            before = len(self.steps)
            start_t = time.perf_counter()
            out = original_step(*args, **kwargs)
            if len(self.steps) > before:
                self.steps[-1]["step_s"] = time.perf_counter() - start_t
            return out

        core.step_fn, runner.execute_model = step, execute
        if spec.arch == "moe":
            count_experts(runner.model, spec.experts_per_tok, experts_seen)

    def measure(self, batch: int) -> list[dict[str, Any]]:
        """Every full-batch step of one batch, tagged with its kind."""
        from benchmarks.harness.engines import prompts

        self.steps.clear()
        inputs = [{"prompt_token_ids": p} for p in prompts(batch, PROMPT_LEN)]
        self.llm.generate(inputs, self.params, use_tqdm=False)
        out = []
        for s in self.steps:
            if "step_s" in s and s["requests"] == batch:
                kind = classify(self.job, s["tokens"] / s["requests"])
                if kind:
                    out.append({**s, "kind": kind})
        return out

    def close(self) -> None:
        from benchmarks.harness.engines import shutdown

        shutdown(self.llm)


def count_experts(model: Any, top_k: int, seen: list[int]) -> None:
    """Record, per MoE layer call, how many distinct experts its tokens route to.

    Random weights do not route uniformly (a block's tokens have similar
    hidden states), so the roofline reads the experts actually touched.
    """
    import torch

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        seen.append(int(torch.topk(logits, top_k, dim=-1).indices.unique().numel()))

    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(hook)

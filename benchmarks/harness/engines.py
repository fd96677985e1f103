"""Starting, verifying and timing vLLM engines.

Two engines over the same weights:
- "sdar": the plugin (SDAR architecture in config.json; block size per
  deployment via hf_overrides);
- "ar": stock vLLM decoding the same weights autoregressively (hf_overrides
  architectures -> Qwen3ForCausalLM / Qwen3MoeForCausalLM). The plugin's
  config hook fires for SDAR architectures only, and `verify()` checks that
  this engine really runs vLLM's own scheduler and runner, so the baseline
  is not accidentally the plugin.

Engines run in-process (`env.configure`), so their scheduler and runner
can be reached and instrumented.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT_SEED = 1234


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "sdar" | "ar"
    block_size: int | None = None  # SDAR only; None = the checkpoint's
    max_model_len: int = 1024
    max_num_seqs: int = 128
    # Equal for both engines so neither is throttled by the token budget.
    max_num_batched_tokens: int = 8192
    dtype: str = "float32"
    # vLLM's default is to compile (on CPU: a Dynamo trace compiled by
    # Inductor); eager starts in seconds and is what the tests run.
    compiled: bool = False
    # SDAR only: denoising forwards per engine iteration (1, k or "block").
    steps_per_iteration: int | str = 1

    @property
    def label(self) -> str:
        return f"sdar-b{self.block_size}" if self.kind == "sdar" else "ar"


def start(model_dir: Path, spec: EngineSpec, ar_architecture: str) -> Any:
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=str(model_dir),
        dtype=spec.dtype,
        enforce_eager=not spec.compiled,
        gpu_memory_utilization=0.5,
        max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs,
        max_num_batched_tokens=spec.max_num_batched_tokens,
        seed=0,
    )
    if spec.kind == "sdar":
        overrides: dict[str, Any] = {}
        if spec.block_size is not None:
            overrides["block_size"] = spec.block_size
        if spec.steps_per_iteration != 1:
            overrides["steps_per_iteration"] = spec.steps_per_iteration
        if overrides:
            kwargs["hf_overrides"] = overrides
    elif spec.kind == "ar":
        kwargs["hf_overrides"] = {"architectures": [ar_architecture]}
    else:
        raise ValueError(f"unknown engine kind {spec.kind!r}")
    return LLM(**kwargs)


def start_verified(model_dir: Path, spec: EngineSpec, ar_architecture: str) -> tuple[Any, dict]:
    """Start an engine and check it is the one meant; (engine, its classes + startup_s)."""
    began = time.perf_counter()
    llm = start(model_dir, spec, ar_architecture)
    try:
        info = verify(llm, spec)
    except Exception:
        shutdown(llm)
        raise
    return llm, info | {"startup_s": round(time.perf_counter() - began, 1)}


def shutdown(llm: Any) -> None:
    """Free the engine so the next one in this process starts clean (as the tests do)."""
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()


def engine_core(llm: Any) -> Any:
    """The in-process EngineCore (needs VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return llm.llm_engine.engine_core.engine_core


def runner_of(llm: Any) -> Any:
    # UniProcExecutor.driver_worker is a WorkerWrapperBase; .worker is the
    # CPUWorker (or SdarCPUWorker), whose model_runner runs the forward.
    return engine_core(llm).model_executor.driver_worker.worker.model_runner


def verify(llm: Any, spec: EngineSpec) -> dict[str, Any]:
    """Check the engine is the one we mean to measure; return its class names."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_sdar.engine.scheduler import SdarScheduler

    scheduler, runner = engine_core(llm).scheduler, runner_of(llm)
    hf_config = llm.llm_engine.model_config.hf_config
    is_sdar = isinstance(scheduler, SdarScheduler)
    if spec.kind == "ar" and (is_sdar or "Sdar" in type(runner).__name__):
        raise RuntimeError("the AR baseline is running the SDAR plugin's scheduler/runner")
    if spec.kind == "ar" and not isinstance(scheduler, Scheduler):
        raise RuntimeError(f"AR baseline scheduler is {type(scheduler)}, not vLLM's")
    if spec.kind == "sdar":
        if not is_sdar:
            raise RuntimeError(f"SDAR engine scheduler is {type(scheduler)}")
        if spec.block_size is not None and scheduler.sdar.block_size != spec.block_size:
            raise RuntimeError(
                f"SDAR block size {scheduler.sdar.block_size}, expected {spec.block_size}"
            )
    return {
        "scheduler": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
        "model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}",
        "architecture": llm.llm_engine.model_config.architecture,
        "block_size": getattr(hf_config, "block_size", None) if is_sdar else None,
    }


def prompts(n: int, length: int, seed: int = PROMPT_SEED) -> list[list[int]]:
    """n random-token prompts; prompts(k) is a prefix of prompts(n) for k < n."""
    rng = random.Random(seed * 1_000_003 + length)
    return [[rng.randrange(100, 150000) for _ in range(length)] for _ in range(n)]


def sampling_params(max_tokens: int, sdar_options: dict[str, Any] | None, **kwargs: Any) -> Any:
    """Greedy, fixed-length by default; SDAR options travel in extra_args."""
    from vllm import SamplingParams

    kwargs.setdefault("temperature", 0.0)
    kwargs.setdefault("ignore_eos", True)
    return SamplingParams(max_tokens=max_tokens, extra_args=sdar_options or None, **kwargs)


@dataclass
class BatchRun:
    wall_s: float
    completion_s: list[float]  # per request, since the batch was submitted
    output_tokens: list[int]
    denoise_forwards: list[int] | None  # SDAR only
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)


def timed_generate(llm: Any, batch: list[Any], params: Any) -> BatchRun:
    """Submit `batch` together via LLM.generate; record when each request finishes.

    LLM.generate drives `llm_engine.step()` until every request is done; a
    wrapper on that instance method stamps each finished request.
    `batch` items are token-id lists or strings.
    """
    engine = llm.llm_engine
    original = engine.step
    finished: dict[str, float] = {}
    start_t = time.perf_counter()

    def step() -> Any:
        outputs = original()
        now = time.perf_counter()
        for out in outputs:
            if getattr(out, "finished", False):
                finished.setdefault(out.request_id, now - start_t)
        return outputs

    engine.step = step  # an instance attribute shadows the class method
    try:
        inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in batch]
        outs = llm.generate(inputs, params, use_tqdm=False)
    finally:
        del engine.step  # back to the class method
    wall = time.perf_counter() - start_t
    completions = [o.outputs[0] for o in outs]
    metrics = [c.spec_decode_metrics for c in completions]
    forwards = None
    if all(m is not None for m in metrics):
        # Per-request SDAR counts (see vllm_sdar.engine.scheduler): one
        # histogram entry per denoising forward.
        forwards = [int(sum(m.histogram)) for m in metrics]
    return BatchRun(
        wall_s=wall,
        completion_s=[finished.get(o.request_id, wall) for o in outs],
        output_tokens=[len(c.token_ids) for c in completions],
        denoise_forwards=forwards,
        texts=[c.text for c in completions],
        finish_reasons=[c.finish_reason for c in completions],
    )

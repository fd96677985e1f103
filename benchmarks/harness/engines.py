"""Checkpoints (the shipped trained toys, or random weights with the real
vocabulary built once into .cache/bench/) and in-process vLLM engines over
them: "sdar" (the plugin) and "ar" (stock vLLM running the same weights as
Qwen3ForCausalLM; `verify()` checks it really runs vLLM's own scheduler and
runner); starting, verifying, instrumenting and timing them.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "vllm_sdar" / "assets"

MODELS: dict[str, dict] = {  # vllm_sdar.tools.tiny.TinySpec fields
    # Qwen3-0.6B's body (untied lm_head as in the SDAR releases): 0.75B
    # parameters. The lm_head init keeps tiny.py's spread of confidences at
    # hidden 128: logit std grows like std * sqrt(hidden).
    "qwen3-0.6b-shape": dict(
        arch="dense", seed=21, block_size=4, hidden_size=1024, num_layers=28, num_heads=16,
        num_kv_heads=8, head_dim=128, intermediate_size=3072,
        lm_head_std=0.5 * math.sqrt(128 / 1024),
    ),  # fmt: skip
    # The test suite's tiny shape (smoke runs): measures overhead only.
    "tiny-dense": dict(arch="dense", block_size=4, seed=3),
}


@dataclass(frozen=True)
class EngineSpec:
    kind: str  # "sdar" | "ar"
    block_size: int | None = None  # SDAR only; None = the checkpoint's
    max_model_len: int = 256  # the toys' max_position_embeddings
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 8192  # equal for both engines: neither throttled
    compiled: bool = False  # vLLM's default (Dynamo + Inductor on CPU); eager starts in seconds
    # SDAR only: denoising forwards per engine iteration (1, k or "block").
    steps_per_iteration: int | str = 1


def new_llm(model: Path | str, **kwargs: Any) -> Any:
    """vLLM's `LLM` as every study starts it (fp32, eager, seed 0); kwargs win."""
    from vllm import LLM

    defaults = dict(dtype="float32", enforce_eager=True, gpu_memory_utilization=0.5, seed=0)
    return LLM(model=str(model), **(defaults | kwargs))


def start_verified(model: Path, spec: EngineSpec) -> tuple[Any, dict]:
    """Start an engine and check it is the one meant (`verify`); (engine, its
    classes + startup_s). "ar" runs the weights as Qwen3ForCausalLM."""
    began = time.perf_counter()
    overrides: dict[str, Any] = {"architectures": ["Qwen3ForCausalLM"]}
    if spec.kind == "sdar":
        overrides = {"block_size": spec.block_size} if spec.block_size is not None else {}
        if spec.steps_per_iteration != 1:
            overrides["steps_per_iteration"] = spec.steps_per_iteration
    llm = new_llm(
        model, enforce_eager=not spec.compiled, max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs, max_num_batched_tokens=spec.max_num_batched_tokens,
        **({"hf_overrides": overrides} if overrides else {}),
    )  # fmt: skip
    try:
        info = verify(llm, spec)
    except Exception:
        shutdown(llm)
        raise
    return llm, info | {"startup_s": round(time.perf_counter() - began, 1)}


def shutdown(llm: Any) -> None:
    """Free the engine so the next one in this process starts clean (as the tests do)."""
    from vllm_sdar.tools.llm_shutdown import shutdown_llm

    shutdown_llm(llm)


class EngineWorker:
    """A `harness.workers` object holding one verified engine (one torch
    thread per engine), if any; `close()` frees it."""

    def __init__(self, model: Path, kind: str, **spec: Any) -> None:
        import torch

        from benchmarks.harness.env import threads

        torch.set_num_threads(threads())
        self.llm, self.info = start_verified(model, EngineSpec(kind, **spec))

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            shutdown(self.llm)


def engine_core(llm: Any) -> Any:
    """The in-process EngineCore (needs VLLM_ENABLE_V1_MULTIPROCESSING=0)."""
    return llm.llm_engine.engine_core.engine_core


def runner_of(llm: Any) -> Any:
    """The model runner (of the CPUWorker, or SdarCPUWorker, in UniProcExecutor's wrapper)."""
    return engine_core(llm).model_executor.driver_worker.worker.model_runner


def verify(llm: Any, spec: EngineSpec) -> dict[str, Any]:
    """Check the engine is the one we mean to measure; return its class names."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_sdar.engine.scheduler import SdarScheduler

    scheduler, runner = engine_core(llm).scheduler, runner_of(llm)
    is_sdar = isinstance(scheduler, SdarScheduler)
    if spec.kind == "ar" and (is_sdar or "Sdar" in type(runner).__name__):
        raise RuntimeError("the AR baseline is running the SDAR plugin's scheduler/runner")
    if spec.kind == "ar" and not isinstance(scheduler, Scheduler):
        raise RuntimeError(f"AR baseline scheduler is {type(scheduler)}, not vLLM's")
    if spec.kind == "sdar" and not is_sdar:
        raise RuntimeError(f"SDAR engine scheduler is {type(scheduler)}")
    if spec.kind == "sdar" and spec.block_size not in (None, scheduler.sdar.block_size):
        raise RuntimeError(f"SDAR block size {scheduler.sdar.block_size}, not {spec.block_size}")
    hf_config = llm.llm_engine.model_config.hf_config
    return {
        "scheduler": f"{type(scheduler).__module__}.{type(scheduler).__qualname__}",
        "model_runner": f"{type(runner).__module__}.{type(runner).__qualname__}",
        "architecture": llm.llm_engine.model_config.architecture,
        "block_size": getattr(hf_config, "block_size", None) if is_sdar else None,
    }


def prompts(n: int, length: int, seed: int = 1234) -> list[list[int]]:
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
    steps_ms: list[float] = field(default_factory=list)  # every `llm_engine.step()`


def timed_generate(llm: Any, batch: list[Any], params: Any, **kwargs: Any) -> BatchRun:
    """Submit `batch` (token-id lists or strings) together via LLM.generate
    (kwargs: its own); time each engine step and stamp each finished request
    by wrapping `llm_engine.step()`, which LLM.generate drives."""
    engine = llm.llm_engine
    original = engine.step
    finished: dict[str, float] = {}
    steps_ms: list[float] = []
    start_t = time.perf_counter()

    def step() -> Any:
        began = time.perf_counter()
        outputs = original()
        now = time.perf_counter()
        steps_ms.append((now - began) * 1000)
        for out in outputs:
            if getattr(out, "finished", False):
                finished.setdefault(out.request_id, now - start_t)
        return outputs

    engine.step = step  # an instance attribute shadows the class method
    try:
        inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in batch]
        outs = llm.generate(inputs, params, use_tqdm=False, **kwargs)
    finally:
        del engine.step  # back to the class method
    wall = time.perf_counter() - start_t
    completions = [o.outputs[0] for o in outs]
    metrics = [c.spec_decode_metrics for c in completions]
    # Per-request SDAR counts (vllm_sdar.engine.scheduler): one histogram
    # entry per denoising forward.
    forwards = [int(sum(m.histogram)) for m in metrics] if None not in metrics else None
    return BatchRun(
        wall_s=wall,
        completion_s=[finished.get(o.request_id, wall) for o in outs],
        output_tokens=[len(c.token_ids) for c in completions],
        denoise_forwards=forwards,
        texts=[c.text for c in completions],
        finish_reasons=[c.finish_reason for c in completions],
        steps_ms=steps_ms,
    )


def checkpoint(name: str, fields: dict) -> Path:
    """The checkpoint of TinySpec(**fields), built on first use."""
    from vllm_sdar.tools.tiny import TinySpec, build  # imports torch: not at the top

    spec = TinySpec(**fields)
    digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:10]
    path = REPO / ".cache" / "bench" / f"{name}-{digest}"
    if not (path / "model.safetensors").exists():
        build(path, spec)
    return path


def model_dir(name: str) -> Path:
    """A shipped asset (`sdar-addition`, ...) or a random-weight `MODELS` model, built."""
    return ASSETS / name if (ASSETS / name).is_dir() else checkpoint(name, MODELS[name])


def problem_prompts(model: Path, n: int) -> list[list[int]]:
    """Held-out problems (chat template) for a trained toy, random ids otherwise."""
    if (model / "eval.json").exists():
        from transformers import AutoTokenizer

        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.toy import held_out

        tok = AutoTokenizer.from_pretrained(model)
        return [prompt_ids(tok, p) for p in held_out(n, model)]
    return prompts(n, 32)

"""Where an engine step's time goes: model forward vs everything around it.

Instance attributes shadow the class methods, so wrapping the in-process
engine's objects times exactly the calls vLLM makes, with no patch to vLLM
or the plugin:

- `LLMEngine.step`           total wall per step (front end included: output
                             processing, detokenization)
- `EngineCore.step_fn`       the engine-core step (bound at init, so the
                             attribute to wrap is step_fn, not step)
- `Scheduler.schedule`       scheduling (SDAR: block plans)
- `Scheduler.update_from_output`  bookkeeping of results (SDAR: block state,
                             commits, stop checks)
- `runner.execute_model`     input preparation + forward + logits
- `runner._model_forward`    the pure transformer forward
  (vllm/v1/worker/gpu_model_runner.py, inherited by the CPU runner)
- `runner.model.compute_logits`  the lm_head over the logit rows
- `runner.sample_tokens`     sampling (SDAR: the unmasking step in Python)

Derived: input prep = execute_model - _model_forward - compute_logits;
engine other = core step - (schedule + execute + sample + update);
front end = LLMEngine.step - core step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.engine import engine_core, runner_of, scheduler_of

# (label, object getter, attribute)
PROBES: list[tuple[str, Callable[[Any], Any], str]] = [
    ("step_total", lambda llm: llm.llm_engine, "step"),
    ("core_step", engine_core, "step_fn"),
    ("schedule", scheduler_of, "schedule"),
    ("update_from_output", scheduler_of, "update_from_output"),
    ("execute_model", runner_of, "execute_model"),
    ("model_forward", runner_of, "_model_forward"),
    ("compute_logits", lambda llm: runner_of(llm).model, "compute_logits"),
    ("sample_tokens", runner_of, "sample_tokens"),
]


@contextmanager
def instrument(llm: Any) -> Iterator[dict[str, list[float]]]:
    """Accumulate perf_counter durations of each probe while the block runs."""
    times: dict[str, list[float]] = defaultdict(list)
    wrapped: list[tuple[Any, str, Any, bool]] = []

    def wrap(label: str, obj: Any, name: str) -> None:
        original = getattr(obj, name)
        # step_fn is an instance attribute (set in EngineCore.__init__); the
        # others are class methods, shadowed here and un-shadowed afterwards.
        own = name in vars(obj)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                times[label].append(time.perf_counter() - start)

        setattr(obj, name, timed)
        wrapped.append((obj, name, original, own))

    try:
        for label, getter, name in PROBES:
            wrap(label, getter(llm), name)
        yield times
    finally:
        for obj, name, original, own in reversed(wrapped):
            if own:
                setattr(obj, name, original)
            else:
                delattr(obj, name)


def breakdown(times: dict[str, list[float]]) -> dict[str, Any]:
    """Seconds per component (summed over steps) and shares of total step wall."""
    total = {k: sum(v) for k, v in times.items()}
    steps = len(times.get("step_total", []))
    step_total = total.get("step_total", 0.0)
    core = total.get("core_step", 0.0)
    execute = total.get("execute_model", 0.0)
    forward = total.get("model_forward", 0.0)
    logits = total.get("compute_logits", 0.0)
    parts = {
        "model_forward": forward,
        "lm_head_logits": logits,
        "input_prep": max(execute - forward - logits, 0.0),
        "sampling_unmasking": total.get("sample_tokens", 0.0),
        "schedule": total.get("schedule", 0.0),
        "update_from_output": total.get("update_from_output", 0.0),
        "engine_other": max(
            core
            - execute
            - total.get("sample_tokens", 0.0)
            - total.get("schedule", 0.0)
            - total.get("update_from_output", 0.0),
            0.0,
        ),
        "frontend_output_processing": max(step_total - core, 0.0),
    }
    shares = {k: round(v / step_total, 4) if step_total else 0.0 for k, v in parts.items()}
    outside = {k: v for k, v in parts.items() if k not in ("model_forward", "lm_head_logits")}
    biggest = max(outside, key=outside.get) if outside else None
    return {
        "steps": steps,
        "step_total_s": round(step_total, 4),
        "mean_step_ms": round(1e3 * step_total / steps, 3) if steps else None,
        "seconds": {k: round(v, 4) for k, v in parts.items()},
        "shares": shares,
        "outside_forward_share": round(1.0 - shares["model_forward"] - shares["lm_head_logits"], 4),
        "biggest_non_forward_cost": biggest,
    }

"""Model Runner V2 glue: the scheduler's plans in, the blocks' contents out.

Everything SDAR does inside an MRV2 step lives in the model state
(`model_state.py`). MRV2 gives a model state no view of the step's
`SchedulerOutput`, and reports per request only the tokens its sampler
appended to MRV2's own token rows (SDAR appends none: a block is not
output until the scheduler says so). So the runner's two entry points
are wrapped, nothing inside them:

- `execute_model`: hands the step's plans to the model state first;
- `sample_tokens`: once MRV2 has built the step's output, puts each
  request's block contents and logprob rows in it (`SdarOutput`).

Imported only where MRV2 runs (worker.py): its modules need Triton.
Under tensor parallelism every rank runs both (MRV2 keeps worker state on
every rank); only the driver's output reaches the scheduler.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.outputs import AsyncModelRunnerOutput, ModelRunnerOutput
from vllm.v1.worker.cpu.model_runner import CPUModelRunner
from vllm.v1.worker.gpu.model_runner import GPUModelRunner

from vllm_sdar.engine.model_state import SdarModelState
from vllm_sdar.engine.plan import plans_of


class SdarOutput(AsyncModelRunnerOutput):
    """MRV2's step output with the SDAR blocks put in when it is read."""

    def __init__(self, inner: Any, result: tuple[list[list[int]], Any]) -> None:
        self.inner = inner
        self.result = result

    def get_output(self) -> ModelRunnerOutput:
        out = self.inner.get_output() if hasattr(self.inner, "get_output") else self.inner
        out.sampled_token_ids, out.logprobs = self.result
        return out


class SdarRunnerV2Mixin:
    """Mixed into vLLM's MRV2 runner (GPU, or its CPU subclass)."""

    model_state: Any

    def execute_model(self, scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        state = self.model_state
        if isinstance(state, SdarModelState):
            state.begin_step(plans_of(scheduler_output))
        return super().execute_model(scheduler_output, *args, **kwargs)  # type: ignore[misc]

    def sample_tokens(self, grammar_output: Any) -> Any:
        out = super().sample_tokens(grammar_output)  # type: ignore[misc]
        sampler = getattr(self.model_state, "sampler", None)
        result = sampler.take_result() if sampler is not None else None
        if out is None or result is None:
            return out
        return SdarOutput(out, result)


class SdarCPUModelRunnerV2(SdarRunnerV2Mixin, CPUModelRunner):
    pass


class SdarGPUModelRunnerV2(SdarRunnerV2Mixin, GPUModelRunner):
    pass

"""LoRA adapters with SDAR: what the runner and scheduler add to vLLM's LoRA path.

vLLM's own LoRA machinery does the rest unchanged: the model's linear layers
and lm_head are wrapped at load time (`LoRAModelRunnerMixin.load_lora_model`),
adapters are loaded and cached per request (`LRUCacheWorkerLoRAManager`), and
every step maps tokens to adapter slots (`set_active_loras`).

1. Runner (`SdarLoraRunnerMixin`): vLLM assumes one logits row per
   request (plus speculative tokens), and maps lm_head rows to adapters
   with that count
   (`input_batch.make_lora_inputs(num_scheduled_tokens, num_sampled_tokens)`).
   An SDAR step takes one logits row per still-masked slot of each request's
   block (runner.py), so `SdarLoraRunnerMixin` passes those per-request row
   counts instead. With the stock counts the lm_head LoRA
   (`LogitsProcessorWithLoRA`, which wraps every LoRA model's lm_head) maps
   rows to the wrong adapters, or fails in the CPU kernel's einsum.
   On CPU it also installs `install_no_lora_rows_fix` (a vLLM 0.32 bug, not
   SDAR's: its PyTorch LoRA ops index the adapter weights with -1 for
   "no adapter", which selects the last slot, so a base-model request
   batched with an adapter request ran with that adapter; seen with stock
   vLLM serving the same weights as plain Qwen3).
2. Scheduler: `LoraAdmission` keeps the distinct adapters of the running
   set within `lora_config.max_loras` (as vLLM's `schedule()` does for its
   scheduled set) and checks an adapter's directory before its request is
   admitted, so a bad path ends that request with finish_reason "error"
   instead of raising inside the worker's forward, which would kill the
   engine for every other request.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from vllm.lora.layers import LoRAMappingType
from vllm.v1.engine import EngineCoreOutput
from vllm.v1.request import Request, RequestStatus

from vllm_sdar.engine.batch_step import logits_rows
from vllm_sdar.engine.plan import BlockPlan, plans_of
from vllm_sdar.engine.request_end import ended_output

logger = logging.getLogger("vllm." + __name__)

# stop_reason prefix of a request ended because its adapter cannot be loaded.
ADAPTER_ERROR = "sdar_lora_adapter_error"


def _zero_no_lora_rows(expand: Callable[..., Any]) -> Callable[..., Any]:
    """vLLM's PyTorch expand op (y += x @ B[idx]) with idx -1 rows adding nothing.

    The shrink before it computed those rows with the last slot's A, into a
    temporary buffer; zeroing them here gives y += 0, bit for bit what a
    batch without adapters computes (vLLM skips the op there).
    """
    if getattr(expand, "_sdar_no_lora_rows", False):
        return expand

    @functools.wraps(expand)
    def wrapper(
        inputs: torch.Tensor,
        lora_b_weights: torch.Tensor,
        output_tensor: torch.Tensor,
        lora_indices_tensor: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        no_lora = lora_indices_tensor < 0
        if bool(no_lora.any()):
            inputs = inputs.masked_fill(no_lora[:, None], 0)
        return expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, *args, **kwargs)

    wrapper._sdar_no_lora_rows = True  # type: ignore[attr-defined]
    return wrapper


def install_no_lora_rows_fix() -> None:
    """Make vLLM's PyTorch LoRA ops (PunicaWrapperCPU) treat index -1 as no adapter.

    Every expand goes through bgmv_expand / bgmv_expand_slice: the sgmv
    variants call them from lora_ops, PunicaWrapperCPU's decode and logits
    paths call the names it imported. Idempotent.
    """
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_expand = _zero_no_lora_rows(module.bgmv_expand)
        module.bgmv_expand_slice = _zero_no_lora_rows(module.bgmv_expand_slice)


class SdarLoraRunnerMixin:
    """Mixed in before `SdarRunnerMixin`: per-request lm_head row counts for LoRA."""

    lora_config: Any
    input_batch: Any
    _sdar_lora_rows: np.ndarray | None = None

    def load_lora_model(self, model: Any, vllm_config: Any, device: torch.device) -> Any:
        if device.type == "cpu":
            install_no_lora_rows_fix()
        return super().load_lora_model(model, vllm_config, device)  # type: ignore[misc]

    def _prepare_inputs(
        self, scheduler_output: Any, num_scheduled_tokens: np.ndarray
    ) -> tuple[torch.Tensor, Any, int]:
        if not self.lora_config:
            return super()._prepare_inputs(scheduler_output, num_scheduled_tokens)  # type: ignore[misc]
        plans: dict[str, BlockPlan] = plans_of(scheduler_output)
        batch = self.input_batch
        # The batch order is fixed before inputs are prepared (_update_states).
        rows = np.array(
            [logits_rows(plans.get(req_id)) for req_id in batch.req_ids[: batch.num_reqs]],
            dtype=np.int32,
        )
        self._sdar_lora_rows = rows
        try:
            out = super()._prepare_inputs(scheduler_output, num_scheduled_tokens)  # type: ignore[misc]
        finally:
            self._sdar_lora_rows = None
        if len(out[0]) != int(rows.sum()):
            # The runner's row rule changed without this one: fail loudly
            # rather than apply adapters to other requests' rows.
            raise RuntimeError(
                f"vllm-sdar LoRA: {len(out[0])} logits rows but {int(rows.sum())} mapped "
                "to adapters; engine/batch_step.py:logits_rows must follow the runner's rows"
            )
        return out

    def set_active_loras(
        self,
        input_batch: Any,
        num_scheduled_tokens: np.ndarray,
        num_sampled_tokens: np.ndarray | None = None,
        mapping_type: LoRAMappingType = LoRAMappingType.LANGUAGE,
    ) -> None:
        # Called by vLLM's _prepare_inputs with one sampled row per request.
        if self._sdar_lora_rows is not None:
            num_sampled_tokens = self._sdar_lora_rows
        super().set_active_loras(  # type: ignore[misc]
            input_batch, num_scheduled_tokens, num_sampled_tokens, mapping_type
        )


def _adapter_id(request: Request) -> int:
    lora = request.lora_request
    return lora.lora_int_id if lora is not None and lora.lora_int_id > 0 else 0


class LoraAdmission:
    """Scheduler-side LoRA rules for admitting waiting requests."""

    def __init__(self, lora_config: Any, max_position_embeddings: int | None) -> None:
        self.lora_config = lora_config
        self.max_position_embeddings = max_position_embeddings
        # (id, path) of adapters whose directory checked out: checked once.
        self._checked: set[tuple[int, str]] = set()
        self._rejected: list[Request] = []
        self._active: set[int] = set()

    @property
    def enabled(self) -> bool:
        return self.lora_config is not None

    def start(self, running: list[Request]) -> None:
        """Adapters held by the running set (before this step's admissions).

        The whole running set counts, not just this step's scheduled part:
        a request skipped for budget this step runs again next step, and the
        worker activates every scheduled request's adapter at once.
        """
        self._active = {i for r in running if (i := _adapter_id(r))}

    def fits(self, request: Request) -> bool:
        """False when the request's adapter would exceed max_loras this step."""
        lora_id = _adapter_id(request)
        return (
            not lora_id or lora_id in self._active or len(self._active) < self.lora_config.max_loras
        )

    def admit(self, request: Request) -> None:
        if lora_id := _adapter_id(request):
            self._active.add(lora_id)

    def adapter_error(self, request: Request) -> str | None:
        """Why the request's adapter cannot be loaded, or None.

        The same checks the worker's loader runs before reading weights
        (vLLM's path resolution and PEFT config validation), plus a weights
        file: a request that passes reaches the forward with a loadable
        adapter directory.
        """
        lora = request.lora_request
        if lora is None or not _adapter_id(request):
            return None
        key = (lora.lora_int_id, lora.lora_path)
        if key in self._checked:
            return None
        from vllm.lora.peft_helper import PEFTHelper
        from vllm.lora.utils import get_adapter_absolute_path

        try:
            path = get_adapter_absolute_path(lora.lora_path)
            helper = PEFTHelper.from_local_dir(path, self.max_position_embeddings)
            helper.validate_legal(self.lora_config)
            weights = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
            if not any(os.path.isfile(os.path.join(path, w)) for w in weights):
                raise FileNotFoundError(f"no adapter_model.safetensors/.bin in {path}")
        except Exception as e:
            return (
                f"{ADAPTER_ERROR}: LoRA adapter {lora.lora_name!r} (id {lora.lora_int_id}) "
                f"at {lora.lora_path!r} cannot be loaded: {type(e).__name__}: {e}"
            )
        self._checked.add(key)
        return None

    def reject(self, request: Request, why: str) -> None:
        """End a waiting request that never ran; its output goes out next update."""
        request.status = RequestStatus.FINISHED_ERROR
        request.stop_reason = why
        logger.error("SDAR request %s: %s", request.request_id, why)
        self._rejected.append(request)

    def take_rejected(self) -> list[tuple[int, EngineCoreOutput]]:
        """(client index, final output) of each request rejected since the last call."""
        done, self._rejected = self._rejected, []
        return [(r.client_index, ended_output(r)) for r in done]

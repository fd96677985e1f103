"""SDAR's worker half on Model Runner V2: a `ModelState` (vLLM's hook for models
whose step is not next-token decoding, as DiffusionGemma uses it).

Division of state (docs/internals.md, "Model Runner V2"): the scheduler owns
every block, as on the V1 runner; MRV2's own per-request state (prompt and
prefill tokens, `num_computed_tokens`) is kept exactly as the scheduler's
and holds no SDAR token:

- `preprocess_state`: the step's layout (`BatchStep`) from the scheduler's
  plans, which `runner_v2.py` hands over before the step; logits are taken
  at each open block's still-masked slots instead of MRV2's "last position"
  rows;
- `prepare_inputs`: the plans' ids (MASK included) written into the
  forward's input ids in place (MRV2 would feed its last sampled token);
- `prepare_attn`: the backend's metadata builders made block-causal once
  (`attention.make_block_causal`, the same wrap as on V1), then MRV2's own
  metadata path;
- `custom_sampler`: `SdarSampler`, one `BatchStep.unmask` per step. It
  reports no sampled token to MRV2 (nothing is appended to MRV2's token
  rows) and, per request, how many scheduled positions are not final
  (`num_rejected`), so MRV2's `num_computed_tokens` lands where the
  scheduler puts it: the open block's start (its KV is rewritten next
  step), or past a prompt chunk. The block contents reach the scheduler
  through `runner_v2.py`, which attaches them to the step's output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from vllm.v1.worker.gpu.model_states.default import DefaultModelState
from vllm.v1.worker.gpu.sample.output import SamplerOutput

from vllm_sdar.algorithm.config import SdarDeployment
from vllm_sdar.engine.attention import make_block_causal
from vllm_sdar.engine.batch_step import BatchStep
from vllm_sdar.engine.plan import BlockPlan
from vllm_sdar.engine.support import check_attention_backend


class _NoPenalties:
    # MRV2's postprocess reads the sampler's penalty counters; SDAR keeps its
    # repetition/frequency context in the plans instead.
    output_bin_counts = None


class SdarSampler:
    """Replaces MRV2's sampler (through `ModelState.custom_sampler`)."""

    penalties_state = _NoPenalties()

    def __init__(self, state: SdarModelState, logprobs_mode: str) -> None:
        self.state = state
        self.logprobs_mode = logprobs_mode
        # The last step's block contents and logprob rows, for runner_v2.py.
        self.result: tuple[list[list[int]], Any] | None = None

    def add_request(self, req_idx: int, sampling_params: Any) -> None:
        # Per-request settings travel in the scheduler's plans, every step.
        return None

    def apply_staged_writes(self) -> None:
        return None

    def __call__(self, logits: torch.Tensor, input_batch: Any) -> SamplerOutput:
        num_reqs = input_batch.num_reqs
        step = self.state.step_for(input_batch)
        rejected = np.zeros(num_reqs, dtype=np.int32)
        if step is None:  # profiling, warm-up: no SDAR step behind the batch
            self.result = None
        else:
            self.result = step.unmask(logits, self.logprobs_mode)
            rejected = self.state.not_final(input_batch, step)
        device = logits.device
        return SamplerOutput(
            sampled_token_ids=torch.zeros((num_reqs, 1), dtype=torch.int64, device=device),
            logprobs_tensors=None,
            num_nans=None,
            num_sampled=torch.zeros(num_reqs, dtype=torch.int32, device=device),
            num_rejected=torch.from_numpy(rejected).to(device),
        )

    def take_result(self) -> tuple[list[list[int]], Any] | None:
        result, self.result = self.result, None
        return result


class SdarModelState(DefaultModelState):
    def __init__(self, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(vllm_config, *args, **kwargs)
        # engine_setup.configure resolved these into hf_config.
        self.deployment = SdarDeployment.from_hf_config(vllm_config.model_config.hf_config)
        self.plans: dict[str, BlockPlan] = {}
        self.step: BatchStep | None = None
        self.sampler: SdarSampler | None = None

    # -- the step's plans (runner_v2.py hands them over) --------------------

    def begin_step(self, plans: dict[str, BlockPlan]) -> None:
        self.plans, self.step = plans, None

    def step_for(self, input_batch: Any) -> BatchStep | None:
        """The step's layout if this batch is the scheduled one (not a dummy
        batch of profiling or warm-up)."""
        step = self.step
        if step is None or step.req_ids != list(input_batch.req_ids):
            return None
        return step

    @staticmethod
    def not_final(input_batch: Any, step: BatchStep) -> np.ndarray:
        """Scheduled positions whose KV is not final after this step, per
        request: the whole open block (the scheduler's num_computed_tokens
        goes back to its start), none for a prompt chunk."""
        computed = input_batch.num_computed_tokens_np[: input_batch.num_reqs]
        scheduled = input_batch.num_scheduled_tokens[: input_batch.num_reqs]
        out = np.zeros(input_batch.num_reqs, dtype=np.int32)
        for i, plan in enumerate(step.plans):
            if plan is not None and plan.num_logits:
                out[i] = int(computed[i]) + int(scheduled[i]) - plan.block_start
        return out

    # -- ModelState hooks ----------------------------------------------------

    def preprocess_state(self, input_batch: Any, *args: Any, **kwargs: Any) -> None:
        super().preprocess_state(input_batch, *args, **kwargs)
        num_reqs = input_batch.num_reqs
        step = BatchStep.build(
            self.plans, input_batch.req_ids, input_batch.query_start_loc_np[1 : num_reqs + 1]
        )
        self.step = step
        # Logits at every still-masked slot. Set before vLLM maps lm_head rows
        # to LoRA adapters, which reads the per-request row counts (0.34).
        device = input_batch.logits_indices.device
        input_batch.logits_indices = torch.from_numpy(step.logits_indices()).to(device)
        cu = np.concatenate([[0], np.cumsum(step.num_logits)]).astype(np.int32)
        input_batch.cu_num_logits_np = cu
        input_batch.cu_num_logits = torch.from_numpy(cu).to(device)

    def prepare_inputs(self, input_batch: Any, req_states: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs(input_batch, req_states)
        if self.step is not None:
            rows, ids = self.step.input_ids()
            if len(rows):
                # In place: the same buffer the forward (and any captured graph)
                # reads.
                ids_t = torch.from_numpy(ids).to(input_batch.input_ids.dtype)
                input_batch.input_ids[torch.from_numpy(rows).to(input_batch.input_ids.device)] = (
                    ids_t.to(input_batch.input_ids.device)
                )
        return inputs

    def prepare_attn(
        self,
        input_batch: Any,
        cudagraph_mode: Any,
        block_tables: Any,
        slot_mappings: Any,
        attn_groups: Any,
        kv_cache_config: Any,
        *args: Any,
        **kwargs: Any,
    ) -> dict[str, Any]:
        for groups in attn_groups:
            for group in groups:
                # The platform's own choice too (FlashInfer on some GPUs).
                check_attention_backend(group.backend.get_name(), group.backend)
                for builder in group.metadata_builders:
                    make_block_causal(builder, self.deployment.block_size)
        return super().prepare_attn(
            input_batch,
            cudagraph_mode,
            block_tables,
            slot_mappings,
            attn_groups,
            kv_cache_config,
            *args,
            **kwargs,
        )

    def custom_sampler(self, sampler: Any) -> tuple[Any, Any] | None:
        self.sampler = SdarSampler(self, self.model_config.logprobs_mode)
        return self.sampler, None

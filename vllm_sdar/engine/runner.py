"""SDAR model runners: vLLM's V1 runner with SDAR inputs and unmasking.

Three changes to the stock runner, all driven by the step's `BlockPlan`s:

1. inputs: the scheduler's token ids (committed block + open block with
   MASKs) are written into the input batch before inputs are prepared;
2. logits: taken at every still-masked slot of each request's block (no
   logit shift in SDAR; decided slots cost no lm_head row), not at the
   last token only;
3. sampling: one `decoding.denoise_batch` over the masked rows of every
   request replaces the sampler (a constant number of tensor ops and one
   device->host transfer per step); the runner returns each block's new
   contents and keeps no SDAR state itself.

Attention metadata builders are made block-causal once, at start-up.
The vLLM methods overridden here are V1-runner internals of 0.32
(`_prepare_inputs`, `sample_tokens`, `initialize_metadata_builders`,
`execute_model_state`): see patches/README.md.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.worker.cpu_model_runner import CPUModelRunner
from vllm.v1.worker.gpu_model_runner import GPUModelRunner

from vllm_sdar.algorithm.config import SdarDeployment
from vllm_sdar.algorithm.decoding import SlotLogprobs
from vllm_sdar.engine.attention import make_block_causal
from vllm_sdar.engine.batch_step import BatchStep, logprobs_lists
from vllm_sdar.engine.inner_steps import InnerBlock, InnerSteps
from vllm_sdar.engine.lora import SdarLoraRunnerMixin
from vllm_sdar.engine.plan import BlockPlan, plans_of
from vllm_sdar.engine.support import check_attention_backend


class SdarRunnerMixin:
    """Mixed into a V1 GPUModelRunner subclass (CPU or GPU)."""

    _sdar_step: BatchStep
    # steps_per_iteration > 1 (inner_steps.py): the loop built for this
    # iteration, then the loop that ran, read by sample_tokens.
    _sdar_steps_per_iteration = 1
    _sdar_max_block_steps = 1
    _sdar_inner: InnerSteps | None = None
    _sdar_ran: InnerSteps | None = None

    def initialize_metadata_builders(self, kv_cache_config: Any, kernel_block_sizes: Any) -> None:
        super().initialize_metadata_builders(kv_cache_config, kernel_block_sizes)
        # The config hook resolved block size and mask id into hf_config.
        deployment = SdarDeployment.from_hf_config(self.model_config.hf_config)
        block_size = deployment.block_size
        self._sdar_max_block_steps = deployment.max_block_steps
        self._sdar_steps_per_iteration = deployment.steps_per_iteration
        for groups in self.attn_groups:
            for group in groups:
                # The platform's own choice too (FlashInfer on some GPUs).
                check_attention_backend(group.backend.get_name(), group.backend)
                for builder in group.metadata_builders:
                    make_block_causal(builder, block_size)

    def _prepare_inputs(
        self, scheduler_output: Any, num_scheduled_tokens: np.ndarray
    ) -> tuple[torch.Tensor, Any, int]:
        plans: dict[str, BlockPlan] = plans_of(scheduler_output)
        batch = self.input_batch
        # V1 feeds ids from its per-request token rows: put the plan's there.
        for req_id, plan in plans.items():
            row = batch.req_id_to_index[req_id]
            end = plan.first_pos + len(plan.token_ids)
            batch.token_ids_cpu[row, plan.first_pos : end] = plan.token_ids
        _, spec_metadata, max_sampled = super()._prepare_inputs(
            scheduler_output, num_scheduled_tokens
        )
        num_reqs = batch.num_reqs
        step = BatchStep.build(
            plans, batch.req_ids[:num_reqs], self.query_start_loc.np[1 : num_reqs + 1]
        )
        self._sdar_step = step
        self._sdar_inner = None
        flat = step.logits_indices()
        if self._sdar_steps_per_iteration > 1:
            # The loop takes its own logits after each forward; the stock
            # path then computes none.
            flat = flat[:0]
            inner = [
                InnerBlock(i, plan, step.open_block_rows(i), plan.block_tokens, plan.step)
                for i, plan in enumerate(step.plans)
                if plan is not None and step.num_logits[i]
            ]
            if inner:
                self._sdar_inner = InnerSteps(
                    inner,
                    self._sdar_steps_per_iteration,
                    self._sdar_max_block_steps,
                    self.model_config.logprobs_mode,
                    int(num_scheduled_tokens[:num_reqs].sum()),
                )
        logits_indices = torch.from_numpy(flat).to(self.device, non_blocking=True)
        return logits_indices, spec_metadata, max_sampled

    def _model_forward(
        self,
        input_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        **model_kwargs: Any,
    ) -> Any:
        forward = functools.partial(
            super()._model_forward,
            input_ids=input_ids,
            positions=positions,
            intermediate_tensors=intermediate_tensors,
            inputs_embeds=inputs_embeds,
            **model_kwargs,
        )
        hidden = forward()
        inner, self._sdar_inner = self._sdar_inner, None
        if inner is None:
            return hidden
        # Inside vLLM's forward context: every forward of the loop reuses the
        # step's attention metadata and slot mapping.
        hidden = inner.run(hidden, input_ids, forward, self.model.compute_logits)
        self._sdar_ran = inner
        return hidden

    @torch.inference_mode()
    def sample_tokens(self, grammar_output: Any) -> ModelRunnerOutput:
        # grammar_output is always None: the SDAR scheduler never sets
        # has_structured_output_requests; a structured request's bitmask
        # rides in its plan (engine/structured.py).
        kv_output = self.kv_connector_output
        self.kv_connector_output = None
        state = self.execute_model_state
        if state is None:
            return ModelRunnerOutput.with_kv_conn_output_only(kv_output)
        self.execute_model_state = None
        step = self._sdar_step
        ran, self._sdar_ran = self._sdar_ran, None
        if ran is not None:
            sampled: list[list[int]] = [[] for _ in step.req_ids]
            per_block: list[SlotLogprobs | None] = [None] * len(step.req_ids)
            for b in ran.blocks:
                sampled[b.row] = b.sampled()
                per_block[b.row] = b.logprob_rows()
            logprobs = logprobs_lists(per_block)
        else:
            # Under tensor parallelism only the driver rank holds the gathered
            # logits (state.logits is None elsewhere).
            sampled, logprobs = step.unmask(state.logits, self.model_config.logprobs_mode)
        return ModelRunnerOutput(
            req_ids=step.req_ids,
            req_id_to_index={req_id: i for i, req_id in enumerate(step.req_ids)},
            sampled_token_ids=sampled,
            logprobs=logprobs,
            kv_connector_output=kv_output,
        )


# SdarLoraRunnerMixin first: it wraps SdarRunnerMixin._prepare_inputs to map
# each request's lm_head rows to its adapter (engine/lora.py).
class SdarCPUModelRunner(SdarLoraRunnerMixin, SdarRunnerMixin, CPUModelRunner):
    pass


class SdarGPUModelRunner(SdarLoraRunnerMixin, SdarRunnerMixin, GPUModelRunner):
    pass

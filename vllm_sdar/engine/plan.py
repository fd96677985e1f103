"""What the scheduler tells the model runner about one request for one step.

The scheduler owns every block's state; the runner is stateless about SDAR.
Shipping the exact token ids with each step (as vLLM ships speculative
tokens) means every tensor-parallel rank feeds identical inputs, and a
preempted or rescheduled request needs no worker-side recovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vllm.v1.core.sched.output import SchedulerOutput

from vllm_sdar.algorithm.decoding import BlockDecoding, BlockStep, RuleContext


@dataclass(frozen=True)
class BlockPlan:
    first_pos: int  # absolute position of token_ids[0]
    token_ids: list[int]  # ids for scheduled positions first_pos .. end (prompt-only ones omitted)
    num_logits: int  # the last num_logits scheduled positions are the block's open slots
    mask_id: int
    block_start: int  # absolute position of the block being denoised
    step: int  # denoising step index within the block
    decoding: BlockDecoding  # the request's constants, one object (not copied field by field)
    first_output_pos: int  # index of block_tokens[0] in the generated output
    # Logits transforms and what they read (None: the request uses none, and
    # nothing more is shipped).
    context: RuleContext | None = None
    # Structured outputs: the grammar's bitmask (int32 words) for the first
    # masked slot, from the scheduler's grammar (None: unconstrained).
    grammar_mask: np.ndarray | None = None

    @property
    def block_tokens(self) -> list[int]:
        """The open slots' current ids (MASK where undecided)."""
        return self.token_ids[len(self.token_ids) - self.num_logits :]

    @property
    def masked_slots(self) -> list[int]:
        """Offsets (into block_tokens) of the undecided slots: the only ones
        whose logits a denoising step reads."""
        return [i for i, t in enumerate(self.block_tokens) if t == self.mask_id]

    def block_step(self, tokens: list[int] | None = None, step: int | None = None) -> BlockStep:
        """The unmasking inputs of this block: the plan's own step unless told
        (several steps per iteration advance them on the worker)."""
        return BlockStep.of(
            self.decoding,
            self.block_tokens if tokens is None else tokens,
            self.block_start,
            self.step if step is None else step,
            self.first_output_pos,
            self.context,
            self.grammar_mask,
        )


@dataclass
class SdarSchedulerOutput(SchedulerOutput):
    """vLLM's SchedulerOutput plus the step's plans, a typed field as vLLM's
    own `scheduled_spec_decode_tokens` (pickled whole to the workers)."""

    sdar_plans: dict[str, BlockPlan] = field(default_factory=dict)


def plans_of(scheduler_output: Any) -> dict[str, BlockPlan]:
    """The step's plans; none for vLLM's own batches (warm-up, profiling)."""
    if isinstance(scheduler_output, SdarSchedulerOutput):
        return scheduler_output.sdar_plans
    return {}

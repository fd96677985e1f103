"""What the scheduler tells the model runner about one request for one step.

The scheduler owns every block's state; the runner is stateless about SDAR.
Shipping the exact token ids with each step (as vLLM ships speculative
tokens) means every tensor-parallel rank feeds identical inputs, and a
preempted or rescheduled request needs no worker-side recovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vllm_sdar.algorithm.decoding import Denoising, OutputRules, RuleContext, Sampling

# SchedulerOutput attribute carrying {request_id: BlockPlan}. SchedulerOutput
# is a plain dataclass, pickled whole to workers (multiprocessing and Ray).
PLANS_ATTR = "sdar_plans"


@dataclass(frozen=True)
class BlockPlan:
    first_pos: int  # absolute position of token_ids[0]
    token_ids: list[int]  # ids for scheduled positions first_pos .. end (prompt-only ones omitted)
    num_logits: int  # the last num_logits scheduled positions are the block's open slots
    mask_id: int
    block_start: int  # absolute position of the block being denoised
    step: int  # denoising step index within the block
    seed: int
    denoising: Denoising
    sampling: Sampling
    output_rules: OutputRules  # min_tokens: stop ids forbidden at early output positions
    first_output_pos: int  # index of block_tokens[0] in the generated output
    # Logits transforms and what they read (None: the request uses none, and
    # nothing more is shipped); vLLM's `logprobs` (None: not asked).
    context: RuleContext | None = None
    num_logprobs: int | None = None
    # Structured outputs: the grammar's bitmask (int32 words) for the first
    # masked slot, from the scheduler's grammar (None: unconstrained).
    grammar_mask: np.ndarray | None = None
    # What ends the request inside an engine iteration of several steps
    # (steps_per_iteration > 1): the runner stops feeding a block once its
    # decided prefix holds one of these ids or reaches max_tokens, as the
    # scheduler's replay of the steps will finish it there.
    finish_ids: frozenset[int] = frozenset()
    max_tokens: int | None = None

    @property
    def block_tokens(self) -> list[int]:
        """The open slots' current ids (MASK where undecided)."""
        return self.token_ids[len(self.token_ids) - self.num_logits :]

    @property
    def masked_slots(self) -> list[int]:
        """Offsets (into block_tokens) of the undecided slots: the only ones
        whose logits a denoising step reads."""
        return [i for i, t in enumerate(self.block_tokens) if t == self.mask_id]

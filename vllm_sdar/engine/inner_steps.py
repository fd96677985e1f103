"""Several denoising steps of the same blocks inside one engine iteration.

The deployment option `steps_per_iteration` (k > 1, or "block") makes the
runner repeat forward + unmasking up to k times inside one `execute_model`,
with the positions, slot mapping and attention metadata of the scheduled
step: only the open blocks' token ids change between forwards, written
into the forward's own `input_ids` on the device. Everything else a step
does is the k = 1 step's: the same `denoise_batch`, the step index
advancing per forward (so the quota schedule and the seeded noise are the
reference's), the open block's KV slots rewritten by each forward as
between engine iterations, the committed prefix riding along (its KV
rewrite is idempotent).

A block leaves the loop when the scheduler's replay will stop it: final,
out of `max_block_steps`, its decided prefix holding a finishing id or
reaching `max_tokens`, or structured (its grammar lives in the scheduler,
so it takes one step per iteration). The loop ends when no block is left,
after k steps, or when the live blocks' open slots are less than half of
the iteration's scheduled tokens: an inner forward re-runs every scheduled
position (committed blocks and prompt chunks ride along), so once most of
them are ride-along a compute-bound forward costs more than the next
iteration, which schedules only what is still open. The runner returns
every block after each of its steps; the scheduler replays them through
its per-step bookkeeping (streaming, stop checks, logprobs, metrics), so
tokens and forward counts equal the k = 1 engine's and the reference's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_sdar.algorithm.decoding import SlotLogprobs, decided_prefix, denoise_batch, pack_step
from vllm_sdar.engine.plan import BlockPlan


@dataclass
class InnerBlock:
    """One request's open block across the iteration's steps."""

    row: int  # the request's index in the runner's output
    plan: BlockPlan
    positions: np.ndarray  # flat batch positions of the open slots
    tokens: list[int]
    step: int
    after_steps: list[list[int]] = field(default_factory=list)
    logprobs: list[SlotLogprobs] = field(default_factory=list)
    live: bool = True

    def masked(self) -> list[int]:
        mask = self.plan.mask_id
        return [i for i, t in enumerate(self.tokens) if t == mask]

    def advance(
        self, tokens: list[int], logprobs: SlotLogprobs | None, max_block_steps: int
    ) -> None:
        self.tokens, self.step = tokens, self.step + 1
        self.after_steps.append(tokens)
        if logprobs is not None:
            self.logprobs.append(logprobs)
        plan, ends = self.plan, self.plan.decoding
        decided = decided_prefix(tokens, plan.mask_id)
        self.live = not (
            decided == len(tokens)
            or self.step >= max_block_steps
            or plan.grammar_mask is not None
            or any(t in ends.finish_ids for t in tokens[:decided])
            or (ends.max_tokens is not None and plan.first_output_pos + decided >= ends.max_tokens)
        )

    def sampled(self) -> list[int]:
        """Every step's block, concatenated (the scheduler splits them)."""
        return [t for block in self.after_steps for t in block]

    def logprob_rows(self) -> SlotLogprobs | None:
        return SlotLogprobs.concat(self.logprobs) if self.logprobs else None


class InnerSteps:
    """The loop of one engine iteration (built by the runner's `_prepare_inputs`)."""

    def __init__(
        self,
        blocks: list[InnerBlock],
        max_steps: int,
        max_block_steps: int,
        logprobs_mode: str,
        scheduled_tokens: int,
    ) -> None:
        self.blocks = blocks
        self.scheduled_tokens = scheduled_tokens
        self.max_steps = max_steps
        self.max_block_steps = max_block_steps
        self.logprobs_mode = logprobs_mode
        self.forwards = 0

    def run(
        self,
        hidden: torch.Tensor,
        input_ids: torch.Tensor,
        forward: Callable[[], torch.Tensor],
        compute_logits: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Unmask after the forward already run (every block starts live),
        then forward again while the rule above allows; returns the last
        forward's hidden states. An empty live set always stops: its open
        slots (0) are under half of any scheduled tokens."""
        device = hidden.device
        self.forwards = 1
        live = list(self.blocks)
        while True:
            masked = [b.masked() for b in live]
            rows = np.concatenate([b.positions[m] for b, m in zip(live, masked, strict=True)])
            logits = compute_logits(hidden[torch.from_numpy(rows).to(device, non_blocking=True)])
            pack = pack_step(
                [b.plan.block_step(b.tokens, b.step) for b in live],
                [len(m) for m in masked],
                live[0].plan.mask_id,
                logits.shape[-1],
            )
            result = denoise_batch(logits, pack, logprobs_mode=self.logprobs_mode, inplace=True)
            for j, b in enumerate(live):
                b.advance(result.tokens(j), result.slot_logprobs(j), self.max_block_steps)
            live = [b for b in live if b.live]
            open_slots = sum(len(b.tokens) for b in live)
            if self.forwards >= self.max_steps or 2 * open_slots < self.scheduled_tokens:
                return hidden
            # Only the still-live blocks' slots change the next forward.
            positions = np.concatenate([b.positions for b in live])
            ids = np.concatenate([np.asarray(b.tokens, dtype=np.int64) for b in live])
            input_ids[torch.from_numpy(positions).to(device, non_blocking=True)] = torch.from_numpy(
                ids
            ).to(device=device, dtype=input_ids.dtype, non_blocking=True)
            hidden = forward()
            self.forwards += 1

"""One engine iteration's SDAR work on the worker, whichever model runner runs it.

Both runners (V1: `runner.py`; Model Runner V2: `model_state.py` and
`runner_v2.py`) lay the scheduled requests out the same way: request i's
scheduled positions are the flat rows `query_ends[i] - num_scheduled[i] ..
query_ends[i]`, in the runner's own batch order. From that layout and the
scheduler's plans this module derives everything SDAR changes in a step,
so the per-step logic exists once:

- the token ids to feed (the plan's ids, MASK included) and where;
- the logits rows (every still-masked slot of each open block; SDAR has no
  logit shift, and decided slots cost no lm_head row);
- the unmasking of every block at once (`decoding.denoise_batch`), and its
  result in vLLM's per-request output layout (block contents, logprob rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from vllm.v1.outputs import LogprobsLists

from vllm_sdar.algorithm.decoding import SlotLogprobs, denoise_batch, pack_step
from vllm_sdar.engine.plan import BlockPlan


def logits_rows(plan: BlockPlan | None) -> int:
    """lm_head rows one request takes this step: one per still-masked slot of
    its open block, none for a prompt chunk (or no plan)."""
    if plan is None or not plan.num_logits:
        return 0
    return len(plan.masked_slots)


@dataclass
class BatchStep:
    """The step's SDAR layout, in the runner's batch order."""

    req_ids: list[str]
    plans: list[BlockPlan | None]  # None: the request has no plan this step
    query_ends: np.ndarray  # flat row after each request's last scheduled position
    # Per request: how many logits rows it takes (its still-masked slots).
    num_logits: list[int]

    @classmethod
    def build(
        cls, plans: dict[str, BlockPlan], req_ids: Sequence[str], query_ends: np.ndarray
    ) -> BatchStep:
        ordered = [plans.get(r) for r in req_ids]
        counts = [logits_rows(p) for p in ordered]
        return cls(list(req_ids), ordered, np.asarray(query_ends, dtype=np.int64), counts)

    def open_block_rows(self, i: int) -> np.ndarray:
        """Flat rows of request i's open slots (the last num_logits scheduled)."""
        plan = self.plans[i]
        assert plan is not None
        end = int(self.query_ends[i])
        return np.arange(end - plan.num_logits, end, dtype=np.int64)

    def logits_indices(self) -> np.ndarray:
        """Flat rows whose logits the step reads, request after request."""
        rows = [
            self.open_block_rows(i)[np.asarray(p.masked_slots, dtype=np.int64)]
            for i, p in enumerate(self.plans)
            if p is not None and self.num_logits[i]
        ]
        return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)

    def input_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(flat rows, ids) the plans fix: every scheduled position from the
        plan's first_pos on (positions before it are prompt tokens, which the
        runner's own token buffer holds)."""
        rows, ids = [], []
        for i, plan in enumerate(self.plans):
            if plan is None or not plan.token_ids:
                continue
            end = int(self.query_ends[i])
            rows.append(np.arange(end - len(plan.token_ids), end, dtype=np.int64))
            ids.append(np.asarray(plan.token_ids, dtype=np.int64))
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(rows), np.concatenate(ids)

    def unmask(
        self, logits: torch.Tensor | None, logprobs_mode: str
    ) -> tuple[list[list[int]], LogprobsLists | None]:
        """Every open block after one denoising step, and the unmasked slots'
        logprob rows. `logits` holds the rows of `logits_indices()`; None on a
        tensor-parallel rank that does not hold the gathered logits (only the
        driver's output reaches the scheduler)."""
        sampled: list[list[int]] = [[] for _ in self.req_ids]
        active = [i for i, n in enumerate(self.num_logits) if n]
        if logits is None or not active:
            return sampled, None
        blocks = [self.plans[i].block_step() for i in active]  # type: ignore[union-attr]
        mask_id = self.plans[active[0]].mask_id  # type: ignore[union-attr]
        pack = pack_step(blocks, [self.num_logits[i] for i in active], mask_id, logits.shape[-1])
        # One batched step for every request; the logits are this step's own
        # tensor, so the forbidden tokens go in in place.
        result = denoise_batch(logits, pack, logprobs_mode=logprobs_mode, inplace=True)
        per_request: list[SlotLogprobs | None] = [None] * len(self.req_ids)
        for b, i in enumerate(active):
            sampled[i] = result.tokens(b)
            per_request[i] = result.slot_logprobs(b)
        return sampled, logprobs_lists(per_request)


def logprobs_lists(per_request: list[SlotLogprobs | None]) -> LogprobsLists | None:
    """Every request's unmasked-slot rows in one LogprobsLists.

    Request i's rows are cu_num_generated_tokens[i]:[i + 1] (slots unmasked
    this step, position order); columns are padded to the widest request
    (-inf, id 0) and the scheduler cuts each request back to its own width.
    """
    if all(lp is None for lp in per_request):
        return None
    width = max(lp.token_ids.shape[1] for lp in per_request if lp is not None)
    cu, ids, vals, ranks = [0], [], [], []
    for lp in per_request:
        n = 0 if lp is None else len(lp.slots)
        cu.append(cu[-1] + n)
        if lp is None or not n:
            continue
        pad = width - lp.token_ids.shape[1]
        ids.append(np.pad(lp.token_ids, ((0, 0), (0, pad))))
        vals.append(np.pad(lp.logprobs, ((0, 0), (0, pad)), constant_values=-np.inf))
        ranks.append(lp.ranks)
    if not ids:
        return LogprobsLists(
            np.zeros((0, width), np.int64),
            np.zeros((0, width), np.float32),
            np.zeros(0, np.int64),
            cu,
        )
    return LogprobsLists(np.concatenate(ids), np.concatenate(vals), np.concatenate(ranks), cu)

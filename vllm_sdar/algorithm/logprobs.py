"""Logprobs of the slots a step unmasks (vLLM's layout and ranks).

Owns vLLM's Sampler.gather_logprobs on a step's logits rows
(`gather_logprobs`: the chosen token, the top k, and the chosen token's
rank) and one block's share of them (`SlotLogprobs`). Pure torch, no vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class SlotLogprobs:
    """Logprobs of the slots one step unmasked, rows in position order.

    Column 0 is the chosen token, then the top `num_logprobs` (vLLM's
    layout: LogprobsLists); rank is 1 + the number of tokens more likely.
    """

    slots: list[int]  # offsets into the block's open slots
    token_ids: np.ndarray  # [n, k + 1] int64
    logprobs: np.ndarray  # [n, k + 1] float32
    ranks: np.ndarray  # [n] int64

    @staticmethod
    def concat(parts: Sequence[SlotLogprobs]) -> SlotLogprobs:
        """Several steps' rows of one block, step after step."""
        return SlotLogprobs(
            [s for p in parts for s in p.slots],
            np.concatenate([p.token_ids for p in parts]),
            np.concatenate([p.logprobs for p in parts]),
            np.concatenate([p.ranks for p in parts]),
        )


def gather_logprobs(
    values: torch.Tensor, chosen: torch.Tensor, num_logprobs: int, as_logprobs: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's Sampler.gather_logprobs on [n, V] logits: (ids, values, ranks)."""
    if as_logprobs:
        values = torch.log_softmax(values.float(), dim=-1)
    k = values.shape[-1] if num_logprobs < 0 else min(num_logprobs, values.shape[-1])
    top_vals, top_ids = torch.topk(values, k, dim=-1)
    own = values.gather(-1, chosen[:, None])
    ranks = (values >= own).sum(-1)
    ids = torch.cat((chosen[:, None], top_ids), dim=1)
    return ids, torch.cat((own, top_vals), dim=1), ranks

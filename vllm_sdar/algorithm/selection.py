"""Slot selection: which proposals a step unmasks, per strategy.

Owns the four unmasking rules (low_confidence_static / _dynamic,
sequential, entropy_bounded) applied to every request of a step at once on
a padded [requests, width] table (`select_rows`, `_padded`), and the
single-request form (`select_slots`). Pure torch, no vLLM.
"""

from __future__ import annotations

import torch

from vllm_sdar.algorithm.denoising import (
    DYNAMIC,
    ENTROPY,
    SEQUENTIAL,
    STATIC,
    STRATEGY_CODES,
    Denoising,
)


def _padded(
    values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int], fill: float
) -> torch.Tensor:
    """Rows scattered into a [requests, width] layout, `fill` elsewhere."""
    out = values.new_full((shape[0] * shape[1],), fill)
    out[index] = values
    return out.view(shape)


def select_rows(
    confidence: torch.Tensor,
    entropy: torch.Tensor | None,
    padded_index: torch.Tensor,
    request_float: torch.Tensor,
    request_int: torch.Tensor,
    strategies: frozenset[int],
    width: int,
) -> torch.Tensor:
    """`select_slots` of every request at once: [M] bool, True = unmask now.

    Each request's rows are laid out on one row of a [R, width] table
    (position order, padding after), so sorting, ranking and prefix sums
    act per request in a constant number of ops and give exactly the
    per-request results: stable sorts break ties toward lower positions.
    """
    shape = (request_int.shape[0], width)
    quota = request_int[:, 0:1]
    code = request_int[:, 1:2]
    cols = torch.arange(width, device=confidence.device).expand(shape)
    chosen = torch.zeros(shape, dtype=torch.bool, device=confidence.device)

    def rank_of(order: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(order).scatter_(1, order, cols)

    if strategies & {STATIC, DYNAMIC}:
        conf = _padded(confidence, padded_index, shape, -1.0)  # padding ranks last
        top = rank_of(torch.sort(conf, dim=1, descending=True, stable=True).indices) < quota
        if STATIC in strategies:
            chosen = torch.where(code == STATIC, top, chosen)
        if DYNAMIC in strategies:
            above = conf > request_float[:, 0:1]
            enough = above.sum(dim=1, keepdim=True) >= quota
            chosen = torch.where(code == DYNAMIC, torch.where(enough, above, top), chosen)
    if SEQUENTIAL in strategies:
        chosen = torch.where(code == SEQUENTIAL, cols < quota, chosen)
    if ENTROPY in strategies:
        if entropy is None:
            raise ValueError("entropy_bounded needs the slots' entropies")
        ent = _padded(entropy, padded_index, shape, float("inf"))  # padding sums last
        ascending, order = torch.sort(ent, dim=1, stable=True)
        within = torch.cumsum(ascending, dim=1) <= request_float[:, 1:2]
        count = within.sum(dim=1, keepdim=True).clamp(min=1)
        chosen = torch.where(code == ENTROPY, rank_of(order) < count, chosen)
    return chosen.view(-1)[padded_index]


def select_slots(
    confidence: torch.Tensor,
    entropy: torch.Tensor | None,
    quota: int,
    denoising: Denoising,
) -> torch.Tensor:
    """Indices (into the masked slots, in position order) to unmask this step."""
    code = STRATEGY_CODES.get(denoising.strategy)
    if code is None:
        raise ValueError(f"unknown remasking_strategy {denoising.strategy!r}")
    n = confidence.shape[0]
    device = confidence.device
    chosen = select_rows(
        confidence.float(),
        None if entropy is None else entropy.float(),
        torch.arange(n, device=device),
        torch.tensor([[denoising.threshold, denoising.eb_threshold]], device=device),
        torch.tensor([[min(quota, n), code]], dtype=torch.long, device=device),
        frozenset({code}),
        n,
    )
    return torch.nonzero(chosen).flatten()

"""Top-k and top-p (nucleus) filtering of logits rows.

Owns the per-row filter the proposals apply before a sampled draw
(`filter_rows`: each row its own top_k / top_p, removed tokens -> -inf),
the nucleus rule itself (`_nucleus`), its uniform-parameter wrapper
(`filter_top_k_top_p`) and the first candidate count of the CPU path's
growing nucleus search (`NUCLEUS_FIRST_K`). Pure torch, no vLLM.
"""

from __future__ import annotations

import torch

# First candidate count when searching a top-p nucleus (see filter_top_k_top_p).
NUCLEUS_FIRST_K = 1024


def filter_rows(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    max_k: int,
    top_p: torch.Tensor | None,
    sync_free: bool,
) -> torch.Tensor:
    """Per-row top-k then top-p on [n, V] logits; removed -> -inf.

    top_k: [n] int64, 0 where the row does not filter; max_k its largest
    value. top_p: [n] float32, >= 1 where the row does not filter.
    """
    vocab = logits.shape[-1]
    if top_k is not None and max_k > 0:
        # kth largest of each row from one topk of the largest k; ties with
        # the kth value are kept (vLLM's rule).
        top = torch.topk(logits, max_k, dim=-1).values
        kth = top.gather(-1, (top_k - 1).clamp(min=0)[:, None])
        kth = kth.masked_fill((top_k <= 0)[:, None], float("-inf"))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        active = top_p < 1.0
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        if sync_free:
            # One full sort: no data-dependent size, so no host sync.
            top, order = torch.sort(logits, dim=-1, descending=True)
            keep_sorted = _nucleus(top, lse, top_p)
        else:
            # The nucleus is found among the k most likely tokens, k growing
            # until every row's nucleus ends inside them: a trained model's
            # nucleus is a few hundred tokens, so this avoids sorting ~152k
            # logits per slot (only a flat distribution needs the full sort).
            # Each round reads a flag on the host: free on the CPU only.
            k = min(vocab, NUCLEUS_FIRST_K)
            while True:
                if k < vocab:
                    top, order = torch.topk(logits, k, dim=-1)
                else:
                    top, order = torch.sort(logits, dim=-1, descending=True)
                keep_sorted = _nucleus(top, lse, top_p)
                if k == vocab or not bool((keep_sorted[:, -1] & active).any()):
                    break
                k = k * 16 if k * 16 < vocab // 4 else vocab
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)
        keep |= ~active[:, None]
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def _nucleus(top: torch.Tensor, lse: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which of the descending-sorted logits `top` lie in each row's nucleus."""
    probs = torch.exp(top - lse)
    # Probability mass strictly before each token: a token is kept while the
    # mass before it has not reached top_p, so the top token always is.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    return mass_before < top_p[:, None]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering on [n, V] logits; removed -> -inf."""
    n, vocab = logits.shape
    k = top_k if 0 < top_k < vocab else 0
    p = top_p if 0.0 < top_p < 1.0 else 1.0
    return filter_rows(
        logits,
        torch.full((n,), k, dtype=torch.long, device=logits.device) if k else None,
        k,
        torch.full((n,), p, device=logits.device) if p < 1.0 else None,
        sync_free=logits.device.type != "cpu",
    )

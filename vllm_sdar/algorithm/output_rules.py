"""What of a block becomes output, and what a slot may never be given.

Owns the tokens a slot may never be given (`OutputRules`: stop ids below
`min_tokens`; MASK is never an output; `denoise_batch` sets both to -inf
before any proposal), which slots of an open block are already final
output (`decided_prefix`), and the cut of an output at its first stop
token or `max_tokens` (`truncate_at_stop`). Pure Python, no vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class OutputRules:
    """Tokens a slot may never be given, whatever the network predicts.

    vLLM's contract for `min_tokens`: no stop token (EOS or
    `stop_token_ids`) ends the output before `min_tokens` tokens, so a stop
    id cannot be proposed at an output position below `min_tokens`.
    """

    min_tokens: int = 0
    stop_ids: tuple[int, ...] = ()


def truncate_at_stop(
    tokens: Sequence[int], stop_ids: Iterable[int], max_tokens: int | None
) -> tuple[list[int], str | None]:
    """Cut generated tokens at the first stop token (kept) or at max_tokens.

    Returns (tokens, finish_reason) with reason "stop", "length" or None.
    Everything after the first stop token is dropped (spec choice).
    """
    stops = set(stop_ids)
    out = list(tokens)
    for i, tok in enumerate(out):
        if max_tokens is not None and i >= max_tokens:
            return out[:i], "length"
        if tok in stops:
            return out[: i + 1], "stop"
    if max_tokens is not None and len(out) >= max_tokens:
        return out[:max_tokens], "length"
    return out, None


def decided_prefix(block_tokens: Sequence[int], mask_id: int) -> int:
    """How many leading slots of an open block are final.

    No strategy ever changes a slot once it is unmasked, so the contiguous
    run of decided slots at the block's left is output already: it can be
    streamed, and a stop token or `max_tokens` inside it ends the request
    without finishing the block (the early finish; spec "Streaming and early
    finish"). Slots right of the first MASK are decided too, but are not
    output yet: text is emitted left to right.
    """
    for i, token in enumerate(block_tokens):
        if token == mask_id:
            return i
    return len(block_tokens)

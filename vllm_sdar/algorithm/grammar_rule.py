"""Structured outputs for SDAR: the left-to-right grammar rule, pure.

A grammar (JSON schema, regex, choice, EBNF/Lark) accepts a token given
every token before it, while SDAR decides the slots of a block in
confidence order. The rule that keeps both (docs/structured-outputs.md has
the whole argument): for a structured request, the decided slots of the
open block are always a prefix of it, and each denoising step

1. draws the *first still-masked slot* under the grammar's bitmask for that
   position (the grammar advanced over every final token before it), and
   counts that slot as certain in the strategy's selection (confidence
   +inf, entropy 0), so it is always unmasked: at least one token per step,
   and it is always valid;
2. proposes and selects the other masked slots exactly as for an
   unconstrained request (their logits are not masked);
3. accepts, left to right after the first slot, each slot that the
   strategy selected and that the grammar accepts after the accepted prefix;
   the first unselected or rejected slot and everything after it stay MASK.

So the decided slots stay a prefix, every decided token is final, the
grammar is advanced only by final tokens, and the output is always a
prefix of a string the grammar accepts.

This module holds the tensor and list halves of the rule, with no grammar
library and no vLLM: the bitmask layout (32 token ids per int32 word, bit
i % 32 of word i // 32, as xgrammar and vLLM ship it), masking the rows,
forcing their selection, folding `min_tokens` into a mask, and the
left-to-right acceptance over a `longest_valid` callable that the caller
backs with its grammar matcher (vLLM's StructuredOutputGrammar in the
engine, an xgrammar GrammarMatcher in the reference decoder).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

# What the first masked slot of a structured block counts as in selection:
# above every confidence threshold (they are <= 1) and first in every
# ranking, and costing nothing of an entropy budget.
FORCED_CONFIDENCE = float("inf")
FORCED_ENTROPY = 0.0
# Bit k of a byte: a bitmask read as bytes (little-endian words, as torch
# and xgrammar lay them out) has id 8 * byte + k at bit k.
_BYTE_BITS = torch.tensor([1 << k for k in range(8)], dtype=torch.uint8)


def bitmask_words(vocab: int) -> int:
    """int32 words of one bitmask row over a vocabulary of `vocab` ids."""
    return (vocab + 31) // 32


def unpack_bitmask(words: torch.Tensor, vocab: int) -> torch.Tensor:
    """[G, W] int32 bitmask rows -> [G, vocab] bool, True = allowed.

    Ids beyond the bitmask's 32 * W are not allowed (a grammar compiled for
    a smaller vocabulary never emits them).
    """
    as_bytes = words.to(torch.int32).contiguous().view(torch.uint8)  # [G, 4 W]
    allowed = (as_bytes.unsqueeze(-1) & _BYTE_BITS.to(words.device)) != 0
    allowed = allowed.reshape(words.shape[0], -1)
    if allowed.shape[1] >= vocab:
        return allowed[:, :vocab]
    pad = allowed.new_zeros((words.shape[0], vocab - allowed.shape[1]))
    return torch.cat([allowed, pad], dim=1)


def allowed_ids(words: np.ndarray) -> list[int]:
    """The ids one bitmask row allows (tests, diagnostics)."""
    bits = np.unpackbits(np.asarray(words, dtype=np.int32).view(np.uint8), bitorder="little")
    return np.nonzero(bits)[0].tolist()


def mask_rows(
    work: torch.Tensor, rows: torch.Tensor, words: torch.Tensor, per_row: bool = False
) -> None:
    """Set every token a row's bitmask forbids to -inf, in place.

    work: [M, V] float logits; rows: [G] row indices; words: [G, W] int32.
    per_row (the CPU path): fill each row where it lies, one op per row,
    with the mask unpacked by numpy, instead of gathering the rows into a
    vocabulary-wide copy and scattering it back (there a fresh [G, V]
    buffer every step costs more than the launches saved, and numpy
    unpacks bits ~10x faster than the equivalent tensor ops).
    """
    vocab = work.shape[1]
    if per_row and work.device.type == "cpu" and words.device.type == "cpu":
        inverted = np.invert(words.numpy().astype(np.int32, copy=False))
        for g, row in enumerate(rows.tolist()):
            forbidden = np.unpackbits(inverted[g].view(np.uint8), bitorder="little")
            if forbidden.shape[0] < vocab:  # ids past the mask: forbidden
                forbidden = np.concatenate(
                    [forbidden, np.ones(vocab - forbidden.shape[0], np.uint8)]
                )
            work[row].masked_fill_(
                torch.from_numpy(forbidden[:vocab]).view(torch.bool), float("-inf")
            )
        return
    forbidden_rows = ~unpack_bitmask(words, vocab)
    work[rows] = work[rows].masked_fill(forbidden_rows, float("-inf"))


def force_rows(confidence: torch.Tensor, entropy: torch.Tensor | None, rows: torch.Tensor) -> None:
    """Make the rows certain for every strategy's selection, in place.

    With confidence +inf a row is among the quota most confident
    (low_confidence_static), above any threshold (low_confidence_dynamic);
    it is the first masked slot of its block, so the leftmost
    (sequential); with entropy 0 it sorts first and spends no budget
    (entropy_bounded; stable sorts put it before other zero-entropy slots).
    """
    confidence[rows] = FORCED_CONFIDENCE
    if entropy is not None:
        entropy[rows] = FORCED_ENTROPY


def without_stop_ids(words: np.ndarray, stop_ids: Iterable[int]) -> np.ndarray:
    """`min_tokens` folded into the first slot's mask: stop ids removed.

    Unless the stop ids are all the grammar allows there (the grammar is
    complete and nothing may follow): then the mask is kept whole, because
    an empty mask has no valid token to draw. The grammar wins over
    min_tokens: the stop token is drawn and ends the request, as vLLM's stop
    check ends on a stop token whatever min_tokens says
    (docs/structured-outputs.md, "EOS, stop and the grammar's end").
    """
    out = np.array(words, dtype=np.int32, copy=True)
    flat = out.view(np.uint32)
    for stop in stop_ids:
        if 0 <= stop < 32 * flat.shape[0]:
            flat[stop // 32] &= np.uint32(~(1 << (stop % 32)) & 0xFFFFFFFF)
    return out if flat.any() else np.array(words, dtype=np.int32, copy=True)


def first_masked(block: Sequence[int], mask_id: int) -> int | None:
    """Offset of the first MASK of a block's open slots, None if there is none."""
    for i, token in enumerate(block):
        if token == mask_id:
            return i
    return None


def accept_left_to_right(
    before: Sequence[int],
    proposed: Sequence[int],
    mask_id: int,
    longest_valid: Callable[[list[int]], int],
) -> tuple[list[int], list[int]]:
    """The step's outcome for a structured block: (new block, accepted tokens).

    before: the block's open slots before the step (a decided prefix, then
    MASK); proposed: the same slots after the unconstrained step, where the
    first masked slot was drawn under the grammar's mask and forced, and
    every other slot holds its proposal if the strategy selected it, else
    MASK. longest_valid(run): how many leading tokens of `run` the grammar
    accepts after the final tokens (it must not advance the grammar; the
    caller advances it by the accepted tokens, which are final).

    Accepted: the run of selected slots from the first masked one, cut at
    the first token the grammar rejects (a token that ends the grammar, such
    as EOS, is accepted and ends the run). The rest is MASK again.
    """
    first = first_masked(before, mask_id)
    if first is None:
        return list(before), []
    run: list[int] = []
    for token in proposed[first:]:
        if token == mask_id:  # not selected this step
            break
        run.append(token)
    accepted = run[: longest_valid(run)] if run else []
    block = list(before[:first]) + accepted
    return block + [mask_id] * (len(before) - len(block)), accepted

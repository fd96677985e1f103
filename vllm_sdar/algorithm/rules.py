"""Per-request output rules and the context of the logits transforms.

Owns what a request forbids or trims besides the unmasking itself: the
tokens a slot may never be given (`OutputRules`: stop ids below
`min_tokens`; MASK is never an output) and their application to logits
rows (`forbid_invalid_tokens`), which slots of an open block are already
final output (`decided_prefix`), the cut of an output at its first stop
token or `max_tokens` (`truncate_at_stop`), and what a block's vLLM
logits transforms (`logit_rules`) read besides the block (`RuleContext`).
Pure torch, no vLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from vllm_sdar.algorithm.logit_rules import LogitRules


@dataclass(frozen=True)
class OutputRules:
    """Tokens a slot may never be given, whatever the network predicts.

    vLLM's contract for `min_tokens`: no stop token (EOS or
    `stop_token_ids`) ends the output before `min_tokens` tokens, so a stop
    id cannot be proposed at an output position below `min_tokens`.
    """

    min_tokens: int = 0
    stop_ids: tuple[int, ...] = ()


def forbid_invalid_tokens(
    masked_logits: torch.Tensor,
    mask_id: int,
    output_positions: torch.Tensor,
    rules: OutputRules | None = None,
) -> torch.Tensor:
    """Set forbidden logits to -inf on [M, V] rows before any proposal.

    MASK is never a valid output: a slot proposed as MASK stays open and the
    block would never finish. Stop ids are forbidden at rows whose output
    position (index in the generated text, [M]) is below `min_tokens`.
    Confidence and entropy are then those of the distribution without the
    forbidden tokens (README, "Decoding rules, safety nets and refusals").
    Returns a new tensor; `denoise_batch` applies the same rules in place.
    """
    out = masked_logits.clone()
    out[:, mask_id] = float("-inf")
    if rules is not None and rules.min_tokens > 0 and rules.stop_ids:
        early = torch.nonzero(output_positions.cpu() < rules.min_tokens).flatten()
        stops = torch.tensor(rules.stop_ids, dtype=torch.long)
        out[early[:, None].to(out.device), stops[None, :].to(out.device)] = float("-inf")
    return out


@dataclass(frozen=True)
class RuleContext:
    """What a block's logits transforms read besides the block itself.

    generated: the request's final output tokens (or only their trailing
    `rules.history_needed`); prompt: the prompt ids, for repetition_penalty.
    """

    rules: LogitRules
    generated: Sequence[int] = ()
    prompt: Sequence[int] = ()


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

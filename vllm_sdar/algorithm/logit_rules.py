"""vLLM's logits transforms, applied to the masked slots of SDAR blocks.

Penalties, logit_bias, allowed_token_ids, bad_words and min_p change a
masked slot's logits *before* its proposal and confidence are computed, so
they change which slots are unmasked as well as which token each draws.

Pure torch (no vLLM import, like `decoding`, which calls it): the
reference decoder and the runner share it. The formulas are vLLM 0.32's
(`apply_penalties`, `apply_bad_words`, the builtin min-p / logit-bias
processors, the allowed-token mask); tests/test_logit_rules.py pins them
against vLLM's own functions on the same rows. vLLM's functions are not
called here because they index by *request* (one row per request, past
tokens per request), while a block has several rows per request whose
"past" differs by position (bad words), and because the reference must run
without the engine.

Every function works on [rows, vocab] with per-row parameters, so one call
serves the masked rows of many requests (a batched unmasking step).

SDAR meaning of "already generated" for a masked slot (vLLM: the request's
output tokens): the request's final output tokens plus the decided slots of
its open block. A prompt tail sharing the first block is prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LogitRules:
    """One request's logits transforms (vLLM SamplingParams meanings)."""

    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    allowed_token_ids: tuple[int, ...] = ()  # empty: every token allowed
    bad_words: tuple[tuple[int, ...], ...] = ()  # token ids, as vLLM tokenizes them

    @classmethod
    def from_params(cls, params: Any) -> LogitRules:
        """From a vLLM SamplingParams (read by attribute: no vLLM import).

        bad_words are the token ids vLLM's front end made of the words
        (`bad_words_token_ids`, one entry per spelling it bans).
        """
        return cls(
            repetition_penalty=float(params.repetition_penalty),
            presence_penalty=float(params.presence_penalty),
            frequency_penalty=float(params.frequency_penalty),
            min_p=float(params.min_p),
            logit_bias=tuple(
                sorted((int(t), float(b)) for t, b in (params.logit_bias or {}).items())
            ),
            allowed_token_ids=tuple(int(t) for t in params.allowed_token_ids or ()),
            bad_words=tuple(tuple(int(t) for t in w) for w in params.bad_words_token_ids or ()),
        )

    @property
    def penalized(self) -> bool:
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
        )

    @property
    def changes_logits(self) -> bool:
        """Anything applied before temperature (min_p comes after it)."""
        return bool(self.penalized or self.logit_bias or self.allowed_token_ids or self.bad_words)

    @property
    def history_needed(self) -> int | None:
        """How many trailing generated tokens the rules read (None: all)."""
        if self.penalized:
            return None
        return max((len(w) - 1 for w in self.bad_words), default=0)


@dataclass(frozen=True)
class RuleContext:
    """What a block's logits transforms read besides the block itself.

    generated: the request's final output tokens (or only their trailing
    `rules.history_needed`); prompt: the prompt ids, for repetition_penalty.
    """

    rules: LogitRules
    generated: Sequence[int] = ()
    prompt: Sequence[int] = ()


@dataclass(frozen=True)
class BlockRows:
    """The masked rows of one block, with what its rules read.

    block: the block's open slots (MASK where undecided); the rows are its
    masked slots in position order. generated: the request's final output
    tokens (only the trailing `rules.history_needed` are read when that is
    not None). prompt: the prompt ids (read by repetition_penalty only).
    """

    rules: LogitRules
    block: Sequence[int]
    mask_id: int
    generated: Sequence[int] = ()
    prompt: Sequence[int] = ()

    @property
    def masked(self) -> list[int]:
        return [i for i, t in enumerate(self.block) if t == self.mask_id]

    def decided(self) -> list[int]:
        return [t for t in self.block if t != self.mask_id]


def banned_by_bad_words(rows: BlockRows) -> list[tuple[int, int]]:
    """(row, token) pairs a masked slot may not take.

    vLLM bans a bad word's last token when the tokens just generated equal
    the rest of the word. In a block, slots after a masked one may already
    be decided, so the word can be completed at any of its positions: a
    slot is banned w[j] when every other position of a window holding w
    (over the generated tokens and the block) is decided and matches. On
    the last position (j = len-1) with nothing decided after it, this is
    vLLM's rule. Positions before the output (prompt) never match, as in
    vLLM. Two slots of one word unmasked in the same step are not checked
    against each other (README: bad_words).
    """
    if not rows.rules.bad_words:
        return []
    history = list(rows.generated)
    need = rows.rules.history_needed
    if need is not None:
        history = history[len(history) - need :] if need else []
    seq = history + list(rows.block)
    offset = len(history)
    mask = rows.mask_id
    row_of = {pos: r for r, pos in enumerate(rows.masked)}
    banned = []
    for word in rows.rules.bad_words:
        n = len(word)
        for pos, row in row_of.items():
            p = offset + pos
            for j in range(n):
                start = p - j
                if start < 0 or start + n > len(seq):
                    continue
                if all(
                    seq[start + i] != mask and seq[start + i] == word[i] for i in range(n) if i != j
                ):
                    banned.append((row, word[j]))
    return banned


def apply_logit_rules(
    logits: torch.Tensor, blocks: Sequence[BlockRows], inplace: bool = False
) -> torch.Tensor:
    """vLLM's pre-temperature transforms on [rows, V] logits (float32).

    Rows are the blocks' masked rows, block after block. vLLM's order:
    allowed_token_ids, bad_words, logit_bias, then the penalties
    (repetition, frequency, presence). Returns a new tensor unless
    `inplace` (float32 logits the caller owns: no vocabulary-wide copy);
    blocks whose rules change nothing cost no vocabulary pass.
    """
    vocab = logits.shape[-1]
    counts = [len(b.masked) for b in blocks]
    if sum(counts) != logits.shape[0]:
        raise ValueError(f"{sum(counts)} masked rows but logits for {logits.shape[0]}")
    starts = [sum(counts[:i]) for i in range(len(blocks))]
    active = [i for i, b in enumerate(blocks) if b.rules.changes_logits and counts[i]]
    if not active:
        return logits
    out = logits.float()
    if out is logits and not inplace:
        out = out.clone()
    device = out.device

    # allowed_token_ids: everything else -> -inf
    allowed = [i for i in active if blocks[i].rules.allowed_token_ids]
    if allowed:
        # Index lists built on the host, so the tensor ops do not grow with
        # the number of blocks.
        rows = torch.tensor(
            [r for i in allowed for r in range(starts[i], starts[i] + counts[i])], dtype=torch.long
        )
        pairs = [(k, t) for k, i in enumerate(allowed) for t in blocks[i].rules.allowed_token_ids]
        keep = torch.zeros(len(allowed), vocab, dtype=torch.bool)
        keep[tuple(torch.tensor(pairs, dtype=torch.long).T)] = True
        keep = keep.repeat_interleave(torch.tensor([counts[i] for i in allowed]), dim=0)
        rows = rows.to(device)
        out[rows] = out[rows].masked_fill(~keep.to(device), float("-inf"))

    # bad_words: one scatter for every banned (row, token)
    pairs = [(starts[i] + r, t) for i in active for r, t in banned_by_bad_words(blocks[i])]
    if pairs:
        r, t = torch.tensor(pairs, dtype=torch.long).T
        out[r.to(device), t.to(device)] = float("-inf")

    # logit_bias: added once per (row, token): a dict maps each token once
    bias = [
        (starts[i] + r, tok, val)
        for i in active
        for r in range(counts[i])
        for tok, val in blocks[i].rules.logit_bias
    ]
    if bias:
        rows_t = torch.tensor([b[0] for b in bias], dtype=torch.long, device=device)
        toks_t = torch.tensor([b[1] for b in bias], dtype=torch.long, device=device)
        vals_t = torch.tensor([b[2] for b in bias], dtype=out.dtype, device=device)
        out.index_put_((rows_t, toks_t), vals_t, accumulate=True)

    penalized = [i for i in active if blocks[i].rules.penalized]
    if penalized:
        out = _apply_penalties(out, blocks, penalized, starts, counts)
    return out


def _apply_penalties(
    out: torch.Tensor,
    blocks: Sequence[BlockRows],
    penalized: list[int],
    starts: list[int],
    counts: list[int],
) -> torch.Tensor:
    """vLLM's formulas on the (row, token) pairs they can change.

    repetition (tokens in the prompt or already generated): logit / r if
    positive else logit * r; then logit -= frequency * count and
    logit -= presence * (count > 0), counts over the generated tokens.
    Every other token is left as is (penalty 1, count 0: the formula is the
    identity there), so only the prompt's and generated tokens' entries
    are gathered: a few hundred per row instead of the vocabulary.
    """
    rows, toks, cnts, rep, freq, pres = [], [], [], [], [], []
    for i in penalized:
        b = blocks[i]
        tally: dict[int, int] = {}
        for t in list(b.generated) + b.decided():
            tally[t] = tally.get(t, 0) + 1
        if b.rules.repetition_penalty != 1.0:
            for t in b.prompt:
                tally.setdefault(t, 0)
        ids = list(tally)
        for r in range(starts[i], starts[i] + counts[i]):
            rows += [r] * len(ids)
            toks += ids
            cnts += [tally[t] for t in ids]
        n = counts[i] * len(ids)
        rep += [b.rules.repetition_penalty] * n
        freq += [b.rules.frequency_penalty] * n
        pres += [b.rules.presence_penalty] * n
    if not rows:
        return out
    device = out.device
    index = (torch.tensor(rows, device=device), torch.tensor(toks, device=device))
    count = torch.tensor(cnts, dtype=out.dtype, device=device)
    penalty = torch.tensor(rep, dtype=out.dtype, device=device)
    vals = out[index]
    vals = vals * torch.where(vals > 0, 1.0 / penalty, penalty)
    vals = vals - torch.tensor(freq, dtype=out.dtype, device=device) * count
    vals = vals - torch.tensor(pres, dtype=out.dtype, device=device) * (count > 0)
    out[index] = vals
    return out


def apply_min_p(scaled: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """vLLM's min-p on temperature-scaled [rows, V] logits, per-row min_p.

    A token is removed (-inf) when its probability is below min_p times the
    row's top probability; min_p 0 keeps every token.
    """
    probs = torch.softmax(scaled, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.to(scaled.device)[:, None]
    return scaled.masked_fill(probs < threshold, float("-inf"))

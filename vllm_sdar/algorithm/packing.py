"""A batched step's inputs: every request's block packed into a few tensors.

Owns the host-side half of a batched unmasking step: one request's block
and options (`BlockStep`), and `pack_step`, which lays the masked slots of
all blocks out as rows (block after block, in position order) and turns the
requests' parameters into per-row and per-request tensors plus flags saying
which features the step uses (`StepPack`), once per step. Pure torch, no
vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from vllm_sdar.algorithm.denoising import (
    STRATEGY_CODES,
    BlockDecoding,
    Denoising,
    Sampling,
    quota_schedule,
)
from vllm_sdar.algorithm.grammar_rule import without_stop_ids
from vllm_sdar.algorithm.logit_rules import BlockRows, LogitRules, RuleContext
from vllm_sdar.algorithm.noise import StepNoise, step_noise
from vllm_sdar.algorithm.output_rules import OutputRules


@dataclass(frozen=True)
class BlockStep:
    """One request's block in a batched unmasking step (host-side inputs).

    tokens: the block's open slots (MASK where undecided), as `denoise_step`.
    noise: the seeded noise key of a sampled request (None: drawn from the
    step's generator). first_output_pos: index of tokens[0] in the output.
    grammar_mask: a structured request's bitmask (int32 words, 32 ids each)
    for its first masked slot, which is then drawn under it and always
    unmasked (`grammar_rule`); None: unconstrained.
    """

    tokens: Sequence[int]
    step: int
    denoising: Denoising
    sampling: Sampling
    noise: StepNoise | None = None
    output_rules: OutputRules | None = None
    first_output_pos: int = 0
    context: RuleContext | None = None
    num_logprobs: int | None = None
    grammar_mask: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        decoding: BlockDecoding,
        tokens: Sequence[int],
        block_start: int,
        step: int,
        first_output_pos: int = 0,
        context: RuleContext | None = None,
        grammar_mask: np.ndarray | None = None,
    ) -> BlockStep:
        """A request's block at one denoising step; the seeded noise is keyed
        by (seed, block start, step), so every path draws the same."""
        sampled = not decoding.sampling.greedy
        return cls(
            tokens=tokens,
            step=step,
            denoising=decoding.denoising,
            sampling=decoding.sampling,
            noise=step_noise(decoding.seed, block_start, step) if sampled else None,
            output_rules=decoding.output_rules,
            first_output_pos=first_output_pos,
            context=context,
            num_logprobs=decoding.num_logprobs,
            grammar_mask=grammar_mask,
        )


@dataclass
class StepPack:
    """A step's per-row and per-request parameters as tensors (host side).

    Rows are the masked slots of every block, block after block, in
    position order; `requests` are the blocks with at least one row. The
    flags say which features the step uses, so `denoise_batch` only runs
    what some request needs (as vLLM's sampler does with all_greedy).
    """

    mask_id: int
    vocab: int
    blocks: list[BlockStep]
    masked: list[list[int]]  # per block: offsets of its masked slots
    first_row: list[int]  # per block: its first row
    num_rows: int
    width: int  # most masked slots of one block
    row_float: torch.Tensor  # [M, 3]: temperature (1 if greedy), top_p, min_p
    row_int: torch.Tensor  # [M, 5]: padded index, top_k, noise key, seeded, greedy
    request_float: torch.Tensor  # [R, 2]: threshold, eb_threshold
    request_int: torch.Tensor  # [R, 2]: quota, strategy code
    forbid: torch.Tensor  # [2, P]: (row, token) pairs set to -inf (stop ids)
    logprob_rows: torch.Tensor  # [L]: rows of the blocks that ask for logprobs
    logprob_width: torch.Tensor  # [L]: 1 + that block's number of logprobs
    strategies: frozenset[int] = frozenset()
    any_greedy: bool = False
    any_sampled: bool = False
    any_unseeded: bool = False
    any_seeded: bool = False
    max_top_k: int = 0
    any_top_p: bool = False
    any_min_p: bool = False
    max_logprobs: int = 0  # widest logprobs row minus the chosen column
    rule_blocks: list[BlockRows] | None = None
    lp_first: list[int] = field(default_factory=list)  # per block: first logprob row
    # Structured requests: the rows drawn under a grammar bitmask (each
    # block's first masked slot) and their bitmasks [G, W] int32; empty
    # when no block of the step is constrained (nothing runs then).
    grammar_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    grammar_words: torch.Tensor = field(
        default_factory=lambda: torch.zeros((0, 0), dtype=torch.int32)
    )


def pack_step(
    blocks: Sequence[BlockStep], masked_rows: Sequence[int], mask_id: int, vocab: int
) -> StepPack:
    """Build the step's parameter tensors once, on the host.

    masked_rows: the number of logits rows the caller has for each block,
    which must be its number of masked slots.
    """
    blocks = list(blocks)
    masked = [[i for i, t in enumerate(b.tokens) if t == mask_id] for b in blocks]
    for slots, rows in zip(masked, masked_rows, strict=True):
        if len(slots) != rows:
            raise ValueError(f"{len(slots)} masked slots but logits for {rows} rows")
    rows = _RowTable(vocab, width=max((len(m) for m in masked), default=0))
    for block, slots in zip(blocks, masked, strict=True):
        rows.add_block(block, slots)
    return rows.pack(mask_id, blocks, masked)


@dataclass
class _RowTable:
    """`pack_step`'s tables while they are filled, block after block."""

    vocab: int
    width: int  # most masked slots of one block
    row_float: list[tuple[float, float, float]] = field(default_factory=list)
    row_int: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    request_float: list[tuple[float, float]] = field(default_factory=list)
    request_int: list[tuple[int, int]] = field(default_factory=list)
    forbid: list[tuple[int, int]] = field(default_factory=list)
    lp_rows: list[int] = field(default_factory=list)
    lp_width: list[int] = field(default_factory=list)
    first_row: list[int] = field(default_factory=list)
    lp_first: list[int] = field(default_factory=list)
    grammar_rows: list[int] = field(default_factory=list)
    grammar_words: list[np.ndarray] = field(default_factory=list)
    strategies: set[int] = field(default_factory=set)
    any_greedy: bool = False
    any_sampled: bool = False
    any_seeded: bool = False
    any_unseeded: bool = False
    any_top_p: bool = False
    any_min_p: bool = False
    any_rules: bool = False
    max_top_k: int = 0
    max_logprobs: int = 0

    def add_block(self, b: BlockStep, slots: list[int]) -> None:
        """One block's request row and one row per masked slot."""
        self.first_row.append(len(self.row_int))
        self.lp_first.append(len(self.lp_rows))
        if not slots:
            return
        strategy = STRATEGY_CODES.get(b.denoising.strategy)
        if strategy is None:
            raise ValueError(f"unknown remasking_strategy {b.denoising.strategy!r}")
        self.strategies.add(strategy)
        quota = quota_schedule(b.denoising.block_size, b.denoising.steps)
        request = len(self.request_int)
        self.request_int.append((min(quota[min(b.step, len(quota) - 1)], len(slots)), strategy))
        self.request_float.append((b.denoising.threshold, b.denoising.eb_threshold))
        s = b.sampling
        rules = b.context.rules if b.context is not None else None
        self.any_rules |= rules is not None and rules.changes_logits
        greedy = s.greedy
        top_k = 0 if greedy or not 0 < s.top_k < self.vocab else s.top_k
        top_p = 1.0 if greedy or not 0.0 < s.top_p < 1.0 else s.top_p
        min_p = 0.0 if greedy or rules is None else rules.min_p
        self.any_greedy |= greedy
        self.any_sampled |= not greedy
        self.any_seeded |= not greedy and b.noise is not None
        self.any_unseeded |= not greedy and b.noise is None
        self.max_top_k = max(self.max_top_k, top_k)
        self.any_top_p |= top_p < 1.0
        self.any_min_p |= min_p > 0.0
        out = b.output_rules
        early_stops = out.stop_ids if out is not None and out.min_tokens > 0 else ()
        nlp = b.num_logprobs
        k = 0
        if nlp is not None:
            k = self.vocab if nlp < 0 else min(nlp, self.vocab)
            self.max_logprobs = max(self.max_logprobs, k)
        seeded = b.noise is not None and not greedy
        for j, slot in enumerate(slots):
            row = len(self.row_int)
            key = b.noise.slot_key(slot) if seeded else 0
            self.row_float.append((s.temperature if not greedy else 1.0, top_p, min_p))
            self.row_int.append((request * self.width + j, top_k, key, int(seeded), int(greedy)))
            early = b.first_output_pos + slot < (out.min_tokens if out is not None else 0)
            if j == 0 and b.grammar_mask is not None:
                # min_tokens goes into the grammar's mask (the grammar wins
                # where only a stop id is valid: grammar_rule.without_stop_ids).
                self.grammar_rows.append(row)
                words = np.asarray(b.grammar_mask, dtype=np.int32)
                self.grammar_words.append(without_stop_ids(words, early_stops) if early else words)
            elif early:
                self.forbid.extend((row, stop) for stop in early_stops)
            if nlp is not None:
                self.lp_rows.append(row)
                self.lp_width.append(k + 1)

    def pack(self, mask_id: int, blocks: list[BlockStep], masked: list[list[int]]) -> StepPack:
        rule_blocks = None
        if self.any_rules:
            rule_blocks = [
                BlockRows(
                    b.context.rules if b.context is not None else _NO_RULES,
                    list(b.tokens),
                    mask_id,
                    b.context.generated if b.context is not None else (),
                    b.context.prompt if b.context is not None else (),
                )
                for b, slots in zip(blocks, masked, strict=True)
                if slots
            ]
        return StepPack(
            mask_id=mask_id,
            vocab=self.vocab,
            blocks=blocks,
            masked=masked,
            first_row=self.first_row,
            num_rows=len(self.row_int),
            width=self.width,
            row_float=torch.tensor(self.row_float, dtype=torch.float32).reshape(-1, 3),
            row_int=torch.tensor(self.row_int, dtype=torch.long).reshape(-1, 5),
            request_float=torch.tensor(self.request_float, dtype=torch.float32).reshape(-1, 2),
            request_int=torch.tensor(self.request_int, dtype=torch.long).reshape(-1, 2),
            forbid=torch.tensor(self.forbid, dtype=torch.long).reshape(-1, 2).T,
            logprob_rows=torch.tensor(self.lp_rows, dtype=torch.long),
            logprob_width=torch.tensor(self.lp_width, dtype=torch.long),
            strategies=frozenset(self.strategies),
            any_greedy=self.any_greedy,
            any_sampled=self.any_sampled,
            any_unseeded=self.any_unseeded,
            any_seeded=self.any_seeded,
            max_top_k=self.max_top_k,
            any_top_p=self.any_top_p,
            any_min_p=self.any_min_p,
            max_logprobs=self.max_logprobs,
            rule_blocks=rule_blocks,
            lp_first=self.lp_first,
            grammar_rows=torch.tensor(self.grammar_rows, dtype=torch.long),
            grammar_words=torch.from_numpy(np.stack(self.grammar_words))
            if self.grammar_words
            else torch.zeros((0, 0), dtype=torch.int32),
        )


_NO_RULES = LogitRules()

"""The structured-output rule on handcrafted logits (issue 23, item 1).

Pure: no engine. A small counting grammar stands in for xgrammar where a
whole decode is simulated (the engine tests run xgrammar itself); the
bitmask layout is checked against xgrammar's own.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from vllm_sdar.algorithm import step as step_module
from vllm_sdar.algorithm.decoding import (
    STRATEGIES,
    BlockStep,
    Denoising,
    OutputRules,
    Sampling,
    denoise_batch,
    denoise_block,
    denoise_step_full,
    pack_step,
    step_noise,
)
from vllm_sdar.algorithm.grammar_rule import (
    accept_left_to_right,
    allowed_ids,
    bitmask_words,
    mask_rows,
    unpack_bitmask,
    without_stop_ids,
)

V = 70
M = V - 1  # MASK
EOS = 1
DIGITS = list(range(10, 20))


def words_of(ids: list[int], vocab: int = V) -> np.ndarray:
    bits = np.zeros(bitmask_words(vocab) * 32, dtype=np.uint8)
    bits[ids] = 1
    return np.packbits(bits, bitorder="little").view(np.int32).copy()


class Digits:
    """A grammar: `lo`..`hi` digit tokens, then EOS (which ends it)."""

    def __init__(self, lo: int = 2, hi: int = 5) -> None:
        self.lo, self.hi = lo, hi
        self.tokens: list[int] = []
        self.ended = False

    def allowed(self) -> list[int]:
        n = len(self.tokens)
        return (DIGITS if n < self.hi else []) + ([EOS] if n >= self.lo else [])

    def accept_token(self, token: int) -> bool:
        if self.ended or token not in self.allowed():
            return False
        if token == EOS:
            self.ended = True
        else:
            self.tokens.append(token)
        return True

    def longest_valid(self, run: list[int]) -> int:
        saved = (list(self.tokens), self.ended)
        n = 0
        for token in run:
            if not self.accept_token(token):
                break
            n += 1
            if self.ended:
                break
        self.tokens, self.ended = saved
        return n


def test_bitmask_layout_matches_xgrammar() -> None:
    xgr = pytest.importorskip("xgrammar")
    vocab = 100
    ids = [0, 5, 31, 32, 63, 64, 99]
    mine = words_of(ids, vocab)
    theirs = xgr.allocate_token_bitmask(1, vocab)
    theirs.fill_(0)
    for i in ids:  # xgrammar's layout: bit i % 32 of word i // 32
        theirs[0, i // 32] |= torch.tensor(1 << (i % 32)).to(torch.int32)
    assert np.array_equal(mine, theirs[0].numpy())
    assert allowed_ids(mine) == ids
    allowed = unpack_bitmask(torch.from_numpy(mine)[None], vocab)[0]
    assert torch.nonzero(allowed).flatten().tolist() == ids
    # A vocabulary wider than the mask: the extra ids are forbidden.
    assert unpack_bitmask(torch.from_numpy(mine)[None], 200)[0, 100:].sum() == 0


@pytest.mark.parametrize("vocab", [V, 100])  # 100: logits wider than the 70-id mask
def test_mask_rows_per_row_equals_batched(vocab: int) -> None:
    rng = random.Random(vocab)
    words = torch.from_numpy(
        np.stack([words_of(rng.sample(range(V), rng.randint(1, 60))) for _ in range(3)])
    )
    rows = torch.tensor([0, 2, 5])
    work = torch.randn(6, vocab)
    one, batched = work.clone(), work.clone()
    mask_rows(one, rows, words, per_row=True)
    mask_rows(batched, rows, words, per_row=False)
    assert torch.equal(one, batched)
    assert torch.equal(one[[1, 3, 4]], work[[1, 3, 4]])  # other rows untouched
    for g, row in enumerate(rows.tolist()):
        kept = torch.nonzero(torch.isfinite(one[row])).flatten().tolist()
        assert kept == allowed_ids(words[g].numpy())


def test_without_stop_ids_keeps_a_mask_of_only_stops() -> None:
    assert allowed_ids(without_stop_ids(words_of([EOS, 12, 40]), [EOS, 2])) == [12, 40]
    # Nothing but stops allowed: the grammar wins (an empty mask has no draw).
    assert allowed_ids(without_stop_ids(words_of([EOS]), [EOS])) == [EOS]


@pytest.mark.parametrize(
    "before,proposed,valid,want_block,want_accepted",
    [
        # forced slot, then selected and valid slots, until an unselected one
        ([5, M, M, M], [5, 11, 12, M], 9, [5, 11, 12, M], [11, 12]),
        # a selected slot after an unselected one is dropped
        ([M, M, M, M], [11, M, 13, 14], 9, [11, M, M, M], [11]),
        # the grammar rejects the third token of the run: cut there
        ([M, M, M, M], [11, 12, 13, 14], 2, [11, 12, M, M], [11, 12]),
        # a block with no MASK is left alone
        ([1, 2, 3, 4], [1, 2, 3, 4], 9, [1, 2, 3, 4], []),
    ],
)
def test_accept_left_to_right(
    before: list[int],
    proposed: list[int],
    valid: int,
    want_block: list[int],
    want_accepted: list[int],
) -> None:
    block, accepted = accept_left_to_right(before, proposed, M, lambda run: min(valid, len(run)))
    assert (block, accepted) == (want_block, want_accepted)


def constrained_block(
    rng: random.Random, strategy: str, greedy: bool, mask: np.ndarray | None, size: int = 8
) -> BlockStep:
    decided = rng.randrange(size)
    tokens = [rng.choice(DIGITS) for _ in range(decided)] + [M] * (size - decided)
    sampling = Sampling() if greedy else Sampling(temperature=1.3, top_k=0, top_p=0.9)
    return BlockStep(
        tokens=tokens,
        step=rng.randrange(2),
        denoising=Denoising(size, rng.choice([2, size]), strategy, 0.6, 1.5),
        sampling=sampling,
        noise=None if greedy else step_noise(rng.randrange(1 << 40), 8, 0),
        output_rules=OutputRules(rng.choice([0, 5]), (EOS,)),
        first_output_pos=rng.randrange(4),
        grammar_mask=mask,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("greedy", [True, False])
def test_first_masked_slot_is_drawn_under_the_mask_and_always_unmasked(
    strategy: str, greedy: bool
) -> None:
    rng = random.Random(f"{strategy}{greedy}")
    for _ in range(40):
        allowed = rng.sample(range(V - 1), rng.randint(1, 5))
        block = constrained_block(rng, strategy, greedy, words_of(allowed))
        n = block.tokens.count(M)
        # Logits that favour forbidden tokens strongly: the mask must win.
        logits = torch.randn(n, V) * 4
        logits[:, [t for t in range(V) if t not in allowed][:3]] += 30
        out, _ = denoise_block(block, logits, M)
        first = block.tokens.index(M)
        assert out[first] in allowed
        assert out[:first] == block.tokens[:first]  # decided slots never change


def test_batched_with_grammar_equals_each_block_alone() -> None:
    rng = random.Random(7)
    for _ in range(30):
        blocks = [
            constrained_block(
                rng,
                rng.choice(STRATEGIES),
                rng.random() < 0.5,
                words_of(rng.sample(range(V - 1), 4)) if rng.random() < 0.5 else None,
            )
            for _ in range(rng.randint(1, 5))
        ]
        counts = [b.tokens.count(M) for b in blocks]
        logits = torch.randn(sum(counts), V) * 3
        result = denoise_batch(logits.clone(), pack_step(blocks, counts, M, V))
        start = 0
        for b, (block, n) in enumerate(zip(blocks, counts, strict=True)):
            alone = denoise_batch(logits[start : start + n].clone(), pack_step([block], [n], M, V))
            assert result.tokens(b) == alone.tokens(0)
            start += n


def test_unconstrained_step_runs_no_grammar_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step without structured requests pays nothing: no mask, no forcing."""

    def boom(*args: object) -> None:
        raise AssertionError("grammar code ran for an unconstrained step")

    monkeypatch.setattr(step_module, "mask_rows", boom)
    monkeypatch.setattr(step_module, "force_rows", boom)
    rng = random.Random(3)
    blocks = [constrained_block(rng, s, True, None) for s in STRATEGIES]
    counts = [b.tokens.count(M) for b in blocks]
    pack = pack_step(blocks, counts, M, V)
    assert pack.grammar_rows.numel() == 0
    denoise_batch(torch.randn(sum(counts), V), pack)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_simulated_decode_is_valid_and_advances_every_step(strategy: str) -> None:
    """The whole rule over random logits: at least one token per step, decided
    slots final, and the output a string of the grammar."""
    for seed in range(25):
        rng = random.Random(seed)
        grammar = Digits(lo=rng.randint(1, 4), hi=rng.randint(4, 9))
        size = rng.choice([4, 8])
        denoising = Denoising(size, size, strategy, 0.3, 2.0)
        output: list[int] = []
        while not grammar.ended:
            block = [M] * size
            step = 0
            while M in block and not grammar.ended:
                n = block.count(M)
                logits = torch.randn(n, V) * 2
                logits[:, DIGITS + [EOS]] += 3  # a model that mostly proposes digits and EOS
                before = list(block)
                proposed, _ = denoise_step_full(
                    torch.tensor(block),
                    logits,
                    M,
                    step,
                    denoising,
                    Sampling(),
                    grammar_mask=words_of(grammar.allowed()),
                )
                block, accepted = accept_left_to_right(
                    before, proposed.tolist(), M, grammar.longest_valid
                )
                assert accepted, "no token this step"
                assert block[: len(before) - before.count(M)] == [t for t in before if t != M]
                for token in accepted:
                    assert grammar.accept_token(token)
                output += accepted
                step += 1
        assert output[-1] == EOS
        assert all(t in DIGITS for t in output[:-1])
        assert grammar.lo <= len(output) - 1 <= grammar.hi

"""The logits transforms on handcrafted logits, and pinned to vLLM's own ops.

`vllm_sdar.algorithm.logit_rules` re-states vLLM 0.32's formulas (the layering keeps
vLLM out of the decoding code); here each one is run next to vLLM's
function on the same rows, so a vLLM change of formula fails a test.
"""

from __future__ import annotations

import math

import pytest
import torch
from vllm.model_executor.layers.utils import apply_penalties
from vllm.v1.sample.logits_processor.builtin import LogitBiasLogitsProcessor, MinPLogitsProcessor
from vllm.v1.sample.ops.bad_words import apply_bad_words

from vllm_sdar.algorithm.decoding import (
    Denoising,
    RuleContext,
    Sampling,
    denoise_step,
    denoise_step_full,
    step_noise,
)
from vllm_sdar.algorithm.logit_rules import (
    BlockRows,
    LogitRules,
    apply_logit_rules,
    apply_min_p,
    banned_by_bad_words,
)

M = 99  # MASK id in these tests
V = 100


def _pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    return torch.tensor([r + [V] * (width - len(r)) for r in rows], dtype=torch.long)


def test_penalty_formulas_by_hand() -> None:
    rules = LogitRules(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    logits = torch.zeros(1, V)
    logits[0, 1], logits[0, 2], logits[0, 3], logits[0, 4] = 2.0, -2.0, 2.0, 2.0
    # token 1 in the prompt only; 2 generated once; 3 twice (once final, once
    # decided in the block); 4 nowhere.
    rows = BlockRows(rules, [3, M], M, generated=[2, 3], prompt=[1])
    out = apply_logit_rules(logits, [rows])[0]
    assert out[1] == pytest.approx(1.0)  # 2 / 2, prompt: repetition only
    assert out[2] == pytest.approx(-2.0 * 2 - 0.5 - 0.25)
    assert out[3] == pytest.approx(2.0 / 2 - 0.5 * 2 - 0.25)
    assert out[4] == pytest.approx(2.0)


def test_penalties_equal_vllms_apply_penalties() -> None:
    torch.manual_seed(0)
    blocks = [
        BlockRows(LogitRules(repetition_penalty=1.3), [5, M, M, 7], M, [1, 2, 2], [9, 5, 40]),
        BlockRows(LogitRules(frequency_penalty=0.7, presence_penalty=-0.4), [M, M], M, [3, 3, 8]),
        BlockRows(LogitRules(), [M], M, [4]),  # no rules: untouched
        BlockRows(
            LogitRules(repetition_penalty=0.8, frequency_penalty=1.1, presence_penalty=0.3),
            [M, 11, M],
            M,
            [11, 60],
            [61],
        ),
    ]
    logits = torch.randn(sum(len(b.masked) for b in blocks), V) * 3
    got = apply_logit_rules(logits, blocks)
    # vLLM: one row per request; repeat each request for each of its rows.
    prompts, outputs, reps, freqs, press = [], [], [], [], []
    for b in blocks:
        for _ in b.masked:
            prompts.append(list(b.prompt))
            outputs.append(list(b.generated) + b.decided())
            reps.append(b.rules.repetition_penalty)
            freqs.append(b.rules.frequency_penalty)
            press.append(b.rules.presence_penalty)
    want = apply_penalties(
        logits.clone(),
        _pad(prompts),
        _pad(outputs),
        torch.tensor(press),
        torch.tensor(freqs),
        torch.tensor(reps),
    )
    torch.testing.assert_close(got, want)


def test_bad_words_single_and_multi_token_by_hand() -> None:
    rules = LogitRules(bad_words=((7,), (1, 2), (3, 4, 5)))
    # Slot 1 follows a decided 1: banned 2; slot 0 follows generated [.., 3, 4]:
    # banned 5. Every slot: banned 7.
    rows = BlockRows(rules, [M, M, 1, M], M, generated=[9, 3, 4])
    banned = set(banned_by_bad_words(rows))
    assert {(0, 7), (1, 7), (2, 7)} <= banned
    assert (0, 5) in banned
    # Slot 3 (row 2) follows the decided 1 at slot 2: banned 2.
    assert (2, 2) in banned
    # Slot 1 (row 1) is followed by 1, not 2, and preceded by a MASK: not banned 2.
    assert (1, 2) not in banned
    # SDAR: a word's prefix can be the slot itself, its end already decided.
    rows = BlockRows(LogitRules(bad_words=((1, 2),)), [M, 2], M)
    assert banned_by_bad_words(rows) == [(0, 1)]
    # A masked position inside the word never matches.
    rows = BlockRows(LogitRules(bad_words=((1, 2, 3),)), [1, M, M], M)
    assert banned_by_bad_words(rows) == []


def test_bad_words_equal_vllms_on_left_to_right_rows() -> None:
    """With only the last slot open (what autoregression sees), vLLM's rule."""
    words = [[7], [1, 2], [3, 4, 5], [6, 6]]
    rules = LogitRules(bad_words=tuple(tuple(w) for w in words))
    torch.manual_seed(1)
    histories = [[], [1], [3, 4], [9, 6], [4, 1], [2, 3, 4]]
    for history in histories:
        logits = torch.randn(1, V)
        rows = BlockRows(rules, list(history[-2:]) + [M], M, history[:-2])
        got = apply_logit_rules(logits, [rows])
        want = logits.clone()
        apply_bad_words(want, {0: [list(w) for w in words]}, [history])
        torch.testing.assert_close(got, want)


def test_logit_bias_and_allowed_equal_vllm() -> None:
    torch.manual_seed(2)
    bias = {3: 5.0, 10: -100.0}
    blocks = [
        BlockRows(LogitRules(logit_bias=tuple(bias.items())), [M, M], M),
        BlockRows(LogitRules(allowed_token_ids=(1, 4, 9)), [M], M),
        BlockRows(LogitRules(), [M], M),
    ]
    logits = torch.randn(4, V)
    got = apply_logit_rules(logits, blocks)
    want = logits.clone()
    proc = LogitBiasLogitsProcessor.__new__(LogitBiasLogitsProcessor)
    proc.biases = {0: bias, 1: bias}
    proc.bias_tensor = torch.tensor([*bias.values(), *bias.values()])
    proc.logits_slice = (torch.tensor([0, 0, 1, 1]), torch.tensor([*bias, *bias]))
    want = proc.apply(want)
    # vLLM's allowed mask: True = disallowed.
    disallowed = torch.ones(V, dtype=torch.bool)
    disallowed[[1, 4, 9]] = False
    want[2].masked_fill_(disallowed, float("-inf"))
    torch.testing.assert_close(got, want)
    assert torch.equal(got[3], logits[3])


def test_min_p_equals_vllm() -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, V) * 4
    min_p = torch.tensor([0.0, 0.1, 0.5])
    proc = MinPLogitsProcessor.__new__(MinPLogitsProcessor)
    proc.min_p_count = 2
    proc.min_p = min_p[:, None].clone()
    torch.testing.assert_close(apply_min_p(logits, min_p), proc.apply(logits.clone()))
    assert torch.equal(apply_min_p(logits, min_p)[0], logits[0])


def test_no_rules_is_the_same_tensor() -> None:
    """Requests without transforms pay no vocabulary pass."""
    logits = torch.randn(3, V)
    rows = [BlockRows(LogitRules(), [M, M], M), BlockRows(LogitRules(min_p=0.2), [M], M)]
    assert apply_logit_rules(logits, rows) is logits


def test_bias_changes_which_slot_unmasks() -> None:
    """Transforms act before confidence: the slot they weaken waits."""
    logits = torch.full((2, V), -5.0)
    logits[0, 10] = 8.0  # slot 0: very sure of 10
    logits[1, 20] = 4.0  # slot 1: less sure of 20
    den = Denoising(block_size=2, steps=2, strategy="low_confidence_static")
    plain = denoise_step(torch.tensor([M, M]), logits, M, 0, den, Sampling())
    assert plain.tolist() == [10, M]
    ctx = RuleContext(LogitRules(logit_bias=((10, -100.0),)))
    biased, _ = denoise_step_full(torch.tensor([M, M]), logits, M, 0, den, Sampling(), None, ctx)
    assert biased.tolist() == [M, 20]


def test_penalty_counts_decided_slots_of_the_block() -> None:
    logits = torch.zeros(1, V)
    logits[0, 5], logits[0, 6] = 3.0, 2.0
    den = Denoising(block_size=2, steps=2)
    ctx = RuleContext(LogitRules(presence_penalty=2.0))
    out, _ = denoise_step_full(torch.tensor([5, M]), logits, M, 1, den, Sampling(), None, ctx)
    assert out.tolist() == [5, 6]  # 5 is already in the block: 3 - 2 < 2


def test_logprobs_raw_and_processed() -> None:
    torch.manual_seed(4)
    logits = torch.randn(4, V) * 2
    den = Denoising(block_size=4, steps=2, strategy="low_confidence_static")
    ctx = RuleContext(LogitRules(logit_bias=((0, 3.0),), repetition_penalty=1.5), [1, 2])
    tokens = torch.tensor([M] * 4)
    for mode in ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"):
        out, lp = denoise_step_full(tokens, logits, M, 0, den, Sampling(), None, ctx, 3, mode)
        assert lp is not None and len(lp.slots) == 2
        rows = BlockRows(ctx.rules, tokens.tolist(), M, ctx.generated)
        # processed: what the token was drawn from, MASK excluded first
        allowed = logits.clone()
        allowed[:, M] = float("-inf")  # MASK is never an output
        base = logits if mode.startswith("raw") else apply_logit_rules(allowed, [rows])
        if mode.endswith("logprobs"):
            base = torch.log_softmax(base, dim=-1)
        for r, slot in enumerate(lp.slots):
            token = int(out[slot])
            assert lp.token_ids[r, 0] == token
            assert lp.logprobs[r, 0] == pytest.approx(float(base[slot, token]))
            top = torch.topk(base[slot], 3)
            assert lp.token_ids[r, 1:].tolist() == top.indices.tolist()
            assert lp.ranks[r] == int((base[slot] >= base[slot, token]).sum())
    # Greedy picks each row's argmax under the processed logits: rank 1.
    _, lp = denoise_step_full(
        tokens, logits, M, 0, den, Sampling(), None, ctx, 0, "processed_logprobs"
    )
    assert lp.ranks.tolist() == [1, 1] and lp.token_ids.shape == (2, 1)


def test_sampled_processed_logprobs_are_the_drawing_distribution() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, V) * 3
    den = Denoising(block_size=2, steps=1)
    s = Sampling(temperature=0.7, top_k=5)
    ctx = RuleContext(LogitRules(min_p=0.05))
    gen = step_noise(1, 0, 0)
    out, lp = denoise_step_full(
        torch.tensor([M, M]), logits, M, 0, den, s, gen, ctx, -1, "processed_logprobs"
    )
    assert lp.token_ids.shape == (2, V + 1)  # -1: the whole vocabulary
    finite = torch.isfinite(torch.from_numpy(lp.logprobs[:, 1:])).sum(-1)
    assert (finite <= 5).all()  # top-k 5 (and min_p) removed the rest
    total = torch.logsumexp(torch.from_numpy(lp.logprobs[:, 1:]), dim=-1)
    assert torch.allclose(total, torch.zeros(2), atol=1e-5)
    assert all(math.isfinite(float(v)) for v in lp.logprobs[:, 0])

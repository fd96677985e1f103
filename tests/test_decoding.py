"""The decoding rules on handcrafted logits (no model, no vLLM)."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_sdar.algorithm.decoding import (
    NUCLEUS_FIRST_K,
    Denoising,
    OutputRules,
    Sampling,
    block_causal_mask,
    denoise_step,
    filter_top_k_top_p,
    first_block,
    propose,
    quota_schedule,
    select_slots,
    step_noise,
    truncate_at_stop,
)

M = 99  # mask id in these tests; vocab is 100
V = 100


def logits_for(peaks: list[tuple[int, float]]) -> torch.Tensor:
    """[n, V] logits where row i puts probability ~p_i on token t_i."""
    rows = []
    for tok, prob in peaks:
        row = torch.full((V,), 0.0)
        # softmax(row)[tok] = prob when row[tok] = log(prob * (V-1) / (1 - prob))
        row[tok] = math.log(prob * (V - 1) / (1 - prob))
        rows.append(row)
    return torch.stack(rows)


@pytest.mark.parametrize(
    "block,steps,expected",
    [
        (4, 4, [1, 1, 1, 1]),
        (4, 2, [2, 2]),
        (4, 3, [2, 1, 1]),
        (4, 1, [4]),
        (8, 8, [1] * 8),
        (8, 3, [3, 3, 2]),
        (8, 5, [2, 2, 2, 1, 1]),
        (16, 4, [4, 4, 4, 4]),
        (16, 5, [4, 3, 3, 3, 3]),
        (16, 7, [3, 3, 2, 2, 2, 2, 2]),
    ],
)
def test_quota_schedule(block: int, steps: int, expected: list[int]) -> None:
    assert quota_schedule(block, steps) == expected
    assert sum(quota_schedule(block, steps)) == block


@pytest.mark.parametrize("steps", [0, 5])
def test_quota_schedule_rejects_bad_steps(steps: int) -> None:
    with pytest.raises(ValueError, match="denoising steps"):
        quota_schedule(4, steps)


def test_propose_greedy_confidence_is_unfiltered_softmax() -> None:
    logits = logits_for([(3, 0.7), (5, 0.2)])
    x0, conf, ent = propose(logits, Sampling())
    assert x0.tolist() == [3, 5]
    assert conf.tolist() == pytest.approx([0.7, 0.2], abs=1e-5)
    assert (ent > 0).all()


def test_propose_entropy_is_the_distributions_entropy() -> None:
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0)) * 3
    logits[1, :10] = float("-inf")  # impossible tokens contribute nothing
    for temperature in (0.0, 0.7):
        sampling = Sampling(temperature=temperature)
        gen = None if sampling.greedy else torch.Generator().manual_seed(0)
        _, _, ent = propose(logits, sampling, gen)
        scaled = logits / (temperature or 1.0)
        want = torch.distributions.Categorical(logits=scaled).entropy()
        assert ent is not None and torch.allclose(ent, want, atol=1e-4)
    assert propose(logits, Sampling(), with_entropy=False)[2] is None


def test_propose_greedy_takes_the_first_of_tied_maxima() -> None:
    logits = torch.zeros(1, V)
    logits[0, [4, 2, 9]] = 5.0
    assert propose(logits, Sampling())[0].item() == 2


def test_propose_sampled_confidence_uses_temperature_not_filter() -> None:
    logits = logits_for([(3, 0.6)])
    sampling = Sampling(temperature=2.0, top_k=1)
    x0, conf, _ = propose(logits, sampling, torch.Generator().manual_seed(0))
    assert x0.item() == 3  # top_k=1 leaves one candidate
    expected = torch.softmax(logits / 2.0, dim=-1)[0, 3].item()
    assert conf.item() == pytest.approx(expected, rel=1e-5)
    assert conf.item() < 0.6  # temperature flattened it; top-k did not renormalise


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    logits = torch.zeros(8, V)  # uniform: the draw is all noise
    sampling = Sampling(temperature=1.0)
    a = propose(logits, sampling, step_noise(7, 4, 0))[0]
    b = propose(logits, sampling, step_noise(7, 4, 0))[0]
    c = propose(logits, sampling, step_noise(8, 4, 0))[0]
    d = propose(logits, sampling, step_noise(7, 4, 1))[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)


def test_top_k_filter_keeps_k_largest() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_top_k_top_p(logits, top_k=2, top_p=1.0)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_filter_keeps_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    # 0.5 < 0.7, 0.5+0.3 >= 0.7: the nucleus is the first two tokens.
    out = filter_top_k_top_p(logits, top_k=0, top_p=0.7)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]
    # Top token alone exceeds p: it is always kept.
    out = filter_top_k_top_p(logits, top_k=0, top_p=0.1)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_top_p_nucleus_search_equals_full_sort() -> None:
    """Rows whose nucleus fits in the first candidates and rows that need more."""
    gen = torch.Generator().manual_seed(3)
    vocab = 20_000
    peaked = torch.randn(2, vocab, generator=gen) * 6  # nucleus of a few tokens
    flat = torch.randn(2, vocab, generator=gen) * 0.1  # nucleus of ~90% of the vocab
    logits = torch.cat([peaked, flat])
    for top_p in (0.3, 0.9, 0.999):
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.exp(sorted_logits - torch.logsumexp(logits, dim=-1, keepdim=True))
        drop_sorted = torch.cumsum(probs, dim=-1) - probs >= top_p
        want = ~torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        got = torch.isfinite(filter_top_k_top_p(logits, top_k=0, top_p=top_p))
        assert torch.equal(got, want), top_p
        assert got[2:].sum() > NUCLEUS_FIRST_K  # the flat rows needed the full search


def test_top_k_then_top_p_order() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    # After top-k=2 the renormalised probs are 4/7, 3/7: top_p=0.5 keeps only one.
    out = filter_top_k_top_p(probs.log(), top_k=2, top_p=0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_sampling_never_draws_filtered_tokens() -> None:
    logits = torch.zeros(64, V)
    sampling = Sampling(temperature=1.0, top_k=3)
    logits[:, [10, 20, 30]] = 1.0
    x0, _, _ = propose(logits, sampling, torch.Generator().manual_seed(1))
    assert set(x0.tolist()) <= {10, 20, 30}


def dyn(threshold: float) -> Denoising:
    return Denoising(block_size=4, steps=4, strategy="low_confidence_dynamic", threshold=threshold)


def test_dynamic_threshold_is_strict() -> None:
    conf = torch.tensor([0.9, 0.95, 0.2, 0.9])
    ent = torch.zeros(4)
    # 0.9 is not > 0.9: only slot 1 passes; it meets quota 1.
    assert select_slots(conf, ent, 1, dyn(0.9)).tolist() == [1]
    assert select_slots(conf, ent, 1, dyn(0.85)).tolist() == [0, 1, 3]


def test_dynamic_falls_back_to_top_quota() -> None:
    conf = torch.tensor([0.5, 0.95, 0.2, 0.6])
    ent = torch.zeros(4)
    # One slot above 0.9 but quota 2: take the two most confident.
    assert select_slots(conf, ent, 2, dyn(0.9)).tolist() == [1, 3]
    assert select_slots(conf, ent, 1, dyn(0.99)).tolist() == [1]


def test_static_takes_quota_most_confident() -> None:
    conf = torch.tensor([0.1, 0.99, 0.98, 0.3])
    den = Denoising(strategy="low_confidence_static")
    assert select_slots(conf, torch.zeros(4), 1, den).tolist() == [1]
    assert select_slots(conf, torch.zeros(4), 3, den).tolist() == [1, 2, 3]


def test_ties_break_toward_lower_position() -> None:
    conf = torch.tensor([0.3, 0.5, 0.5, 0.5])
    den = Denoising(strategy="low_confidence_static")
    assert select_slots(conf, torch.zeros(4), 2, den).tolist() == [1, 2]
    ent = torch.tensor([0.2, 0.1, 0.1, 0.1])
    eb = Denoising(strategy="entropy_bounded", eb_threshold=0.15)
    assert select_slots(conf, ent, 1, eb).tolist() == [1]


def test_sequential_takes_leftmost() -> None:
    conf = torch.tensor([0.1, 0.9, 0.8, 0.7])
    den = Denoising(strategy="sequential")
    assert select_slots(conf, torch.zeros(4), 2, den).tolist() == [0, 1]


def test_entropy_bounded_prefix() -> None:
    ent = torch.tensor([0.3, 0.05, 0.2, 0.1])
    conf = torch.zeros(4)
    # Ascending: 0.05 (1), 0.1 (3), 0.2 (2), 0.3 (0); cumulative 0.05, 0.15, 0.35, 0.65
    den = Denoising(strategy="entropy_bounded", eb_threshold=0.35)
    assert select_slots(conf, ent, 1, den).tolist() == [1, 2, 3]
    den = Denoising(strategy="entropy_bounded", eb_threshold=0.01)
    assert select_slots(conf, ent, 1, den).tolist() == [1]  # at least one


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="remasking_strategy"):
        select_slots(torch.zeros(2), torch.zeros(2), 1, Denoising(strategy="nope"))


def test_denoise_step_writes_only_masked_slots() -> None:
    tokens = torch.tensor([7, M, M, M])  # slot 0 is a prompt tail token
    logits = logits_for([(1, 0.99), (11, 0.3), (12, 0.95), (13, 0.5)])
    den = Denoising(block_size=4, steps=4, strategy="low_confidence_dynamic", threshold=0.9)
    out = denoise_step(tokens, logits[1:], M, 0, den, Sampling())
    assert out.tolist() == [7, M, 12, M]  # slot 0 never changes


def test_denoise_step_needs_logits_for_exactly_the_masked_slots() -> None:
    tokens = torch.tensor([7, M, M, M])
    den = Denoising(block_size=4, steps=4, strategy="low_confidence_static")
    with pytest.raises(ValueError, match="3 masked slots but logits for 4 rows"):
        denoise_step(tokens, logits_for([(1, 0.5)] * 4), M, 0, den, Sampling())


def test_denoise_step_quota_caps_at_masked_count() -> None:
    tokens = torch.tensor([7, 8, 9, M])
    logits = logits_for([(1, 0.5)])
    den = Denoising(block_size=4, steps=1, strategy="low_confidence_static")
    out = denoise_step(tokens, logits, M, 0, den, Sampling())
    assert out.tolist() == [7, 8, 9, 1]


def test_static_block_finishes_in_exactly_steps() -> None:
    for steps in (1, 2, 3, 4):
        den = Denoising(block_size=4, steps=steps, strategy="low_confidence_static")
        tokens = torch.full((4,), M)
        logits = logits_for([(1, 0.4), (2, 0.6), (3, 0.5), (4, 0.3)])
        used = 0
        while (tokens == M).any():
            masked = tokens == M
            tokens = denoise_step(tokens, logits[masked], M, used, den, Sampling())
            used += 1
        assert used == steps
        assert tokens.tolist() == [1, 2, 3, 4]


def test_block_causal_mask() -> None:
    mask = block_causal_mask(q_start=4, q_len=4, k_len=8, block_size=4)
    assert mask.all()  # block 1 sees block 0 and all of itself
    mask = block_causal_mask(q_start=0, q_len=8, k_len=8, block_size=4)
    assert mask[0].tolist() == [True] * 4 + [False] * 4  # bidirectional inside block 0
    assert mask[5].all()


@pytest.mark.parametrize(
    "prompt_len,expected", [(1, (0, 1)), (3, (0, 3)), (4, (4, 0)), (5, (4, 1)), (14, (12, 2))]
)
def test_first_block_layout(prompt_len: int, expected: tuple[int, int]) -> None:
    assert first_block(prompt_len, 4) == expected


def test_truncate_eos_in_middle_of_block() -> None:
    assert truncate_at_stop([5, 6, 2, 7], {2}, None) == ([5, 6, 2], "stop")
    assert truncate_at_stop([5, 6, 7, 8], {2}, None) == ([5, 6, 7, 8], None)


def test_truncate_max_tokens_in_middle_of_block() -> None:
    assert truncate_at_stop([5, 6, 7, 8], {2}, 2) == ([5, 6], "length")
    assert truncate_at_stop([5, 2, 7, 8], {2}, 2) == ([5, 2], "stop")
    assert truncate_at_stop([5, 6, 2, 8], {2}, 2) == ([5, 6], "length")


# -- forbidden tokens: MASK never, stop ids not before min_tokens ----------


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mask_is_never_proposed_even_as_argmax(temperature: float) -> None:
    # MASK is every row's argmax by far: before the fix the slots stayed
    # masked forever. Now the runner-up wins.
    logits = torch.zeros(4, V)
    logits[:, M] = 50.0
    logits[torch.arange(4), torch.tensor([5, 6, 7, 8])] = 10.0
    tokens = torch.full((4,), M)
    sampling = Sampling(temperature=temperature)
    gen = None if sampling.greedy else step_noise(1, 0, 0)
    out = denoise_step(
        tokens, logits, M, 0, Denoising(4, 1, "low_confidence_static"), sampling, gen
    )
    assert M not in out.tolist()
    if temperature == 0.0:
        assert out.tolist() == [5, 6, 7, 8]


def test_stop_ids_forbidden_below_min_tokens_only() -> None:
    stop = 3
    logits = torch.zeros(4, V)
    logits[:, stop] = 20.0  # the stop id is everyone's argmax
    logits[:, 40] = 10.0
    tokens = torch.full((4,), M)
    rules = OutputRules(min_tokens=6, stop_ids=(stop,))
    # Slots at output positions 4, 5, 6, 7: the first two may not stop.
    out = denoise_step(
        tokens,
        logits,
        M,
        0,
        Denoising(4, 1, "low_confidence_static"),
        Sampling(),
        None,
        rules,
        first_output_pos=4,
    )
    assert out.tolist() == [40, 40, stop, stop]
    # Without min_tokens the stop id wins everywhere.
    free = denoise_step(tokens, logits, M, 0, Denoising(4, 1, "low_confidence_static"), Sampling())
    assert free.tolist() == [stop] * 4


def test_min_tokens_respects_the_slot_order_among_open_slots() -> None:
    # Output positions follow the masked slots' places, not their rank.
    tokens = torch.tensor([11, M, 12, M])
    logits = torch.zeros(2, V)
    logits[:, 3] = 20.0
    logits[:, 40] = 10.0
    rules = OutputRules(min_tokens=3, stop_ids=(3,))
    out = denoise_step(
        tokens,
        logits,
        M,
        0,
        Denoising(4, 1, "low_confidence_static"),
        Sampling(),
        None,
        rules,
        first_output_pos=0,
    )
    # Slot 1 is output position 1 (< 3): no stop; slot 3 is position 3: free.
    assert out.tolist() == [11, 40, 12, 3]

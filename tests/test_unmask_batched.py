"""The batched unmasking step (issue 12, item 4): one step for all requests.

- batched == each request alone (so seeded output does not depend on the
  batch), on random mixes of strategies, sampling and output options;
- the number of dispatched tensor ops does not grow with the batch, and a
  step reads the device exactly once;
- the hashed seeded noise is uniform / draws the softmax distribution.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from vllm_sdar.algorithm import proposals
from vllm_sdar.algorithm import step as step_module
from vllm_sdar.algorithm.decoding import (
    STRATEGIES,
    BlockStep,
    Denoising,
    OutputRules,
    RuleContext,
    Sampling,
    denoise_batch,
    denoise_block,
    hash_uniform,
    pack_step,
    propose,
    step_noise,
)
from vllm_sdar.algorithm.filtering import filter_rows
from vllm_sdar.algorithm.logit_rules import LogitRules

V = 97
M = V - 1  # MASK inside the vocabulary


def random_block(rng: random.Random, kind: dict[str, Any] | None = None) -> BlockStep:
    """One request's block with random (or `kind`'s) options."""
    kind = kind or {}
    size = kind.get("block", rng.choice([2, 4, 8]))
    steps = rng.randint(1, size)
    tokens = [M if rng.random() < 0.7 else rng.randrange(M) for _ in range(size)]
    if M not in tokens:
        tokens[rng.randrange(size)] = M
    strategy = kind.get("strategy", rng.choice(STRATEGIES))
    if kind.get("greedy", rng.random() < 0.4):
        sampling = Sampling()
    else:
        sampling = Sampling(
            temperature=rng.choice([0.5, 1.0, 1.7]),
            top_k=rng.choice([0, 0, 3, 20]),
            top_p=rng.choice([1.0, 1.0, 0.5, 0.9]),
        )
    noise = None if sampling.greedy else step_noise(rng.randrange(1 << 40), 4 * rng.randrange(9), 0)
    min_tokens = kind.get("min_tokens", rng.choice([0, 0, 3]))
    rules = OutputRules(min_tokens, (1, 2)) if min_tokens else None
    context = None
    if kind.get("rules", rng.random() < 0.2):
        context = RuleContext(
            LogitRules(min_p=0.05, logit_bias=((5, 2.0),), presence_penalty=0.5),
            generated=(5, 6, 7),
        )
    return BlockStep(
        tokens=tokens,
        step=rng.randrange(steps),
        denoising=Denoising(
            block_size=size,
            steps=steps,
            strategy=strategy,
            threshold=rng.choice([0.3, 0.6, 0.9]),
            eb_threshold=rng.choice([0.5, 2.0, 6.0]),
        ),
        sampling=sampling,
        noise=noise,
        output_rules=rules,
        first_output_pos=rng.randrange(4),
        context=context,
        num_logprobs=kind.get("logprobs", rng.choice([None, None, 0, 3, -1])),
    )


def random_logits(rng: random.Random, rows: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    scale = rng.choice([0.5, 3.0, 8.0])
    return torch.randn(rows, V, generator=gen) * scale


def rows_of(block: BlockStep) -> int:
    return sum(t == M for t in block.tokens)


def alone(block: BlockStep, logits: torch.Tensor, mode: str) -> tuple[list[int], Any]:
    return denoise_block(block, logits, M, logprobs_mode=mode)


def assert_same_logprobs(got: Any, want: Any) -> None:
    if want is None:
        assert got is None
        return
    assert got.slots == want.slots
    assert np.array_equal(got.ranks, want.ranks)
    assert np.array_equal(got.logprobs, want.logprobs)
    # Equal values (-inf past a top-k filter) may come in any id order.
    finite = np.isfinite(want.logprobs)
    assert np.array_equal(got.token_ids[finite], want.token_ids[finite])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), mode=st.sampled_from(["raw_logprobs", "processed_logprobs"]))
def test_batched_equals_each_request_alone(seed: int, mode: str) -> None:
    rng = random.Random(seed)
    blocks = [random_block(rng) for _ in range(rng.randint(1, 9))]
    logits = [random_logits(rng, rows_of(b)) for b in blocks]
    pack = pack_step(blocks, [rows_of(b) for b in blocks], M, V)
    batch = torch.cat(logits)
    before = batch.clone()
    result = denoise_batch(batch, pack, logprobs_mode=mode)
    assert torch.equal(batch, before)  # not in place unless asked
    for i, (block, rows) in enumerate(zip(blocks, logits, strict=True)):
        tokens, lp = alone(block, rows, mode)
        assert result.tokens(i) == tokens, i
        assert_same_logprobs(result.slot_logprobs(i), lp)
    # The accelerator path (no row chunks, sync-free nucleus), and in place
    # (the runner's tensor): the same results.
    again = denoise_batch(batch, pack, logprobs_mode=mode, inplace=True, cpu_path=False)
    for i in range(len(blocks)):
        assert again.tokens(i) == result.tokens(i)
        assert_same_logprobs(again.slot_logprobs(i), result.slot_logprobs(i))
    # The CPU path's row chunks, as a Qwen3 vocabulary gets them (this V
    # fits a whole batch in one chunk): the same results.
    budget = proposals.CPU_CHUNK_ELEMENTS
    proposals.CPU_CHUNK_ELEMENTS = 4 * V
    try:
        chunked = denoise_batch(torch.cat(logits), pack, logprobs_mode=mode)
    finally:
        proposals.CPU_CHUNK_ELEMENTS = budget
    for i in range(len(blocks)):
        assert chunked.tokens(i) == result.tokens(i)
        assert_same_logprobs(chunked.slot_logprobs(i), result.slot_logprobs(i))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_seeded_tokens_do_not_depend_on_the_batch(seed: int) -> None:
    rng = random.Random(seed)
    blocks = [random_block(rng, {"greedy": False}) for _ in range(6)]
    logits = [random_logits(rng, rows_of(b)) for b in blocks]

    def run(order: list[int]) -> dict[int, list[int]]:
        pack = pack_step([blocks[i] for i in order], [rows_of(blocks[i]) for i in order], M, V)
        result = denoise_batch(torch.cat([logits[i] for i in order]), pack)
        return {i: result.tokens(k) for k, i in enumerate(order)}

    everyone = run(list(range(6)))
    subset = rng.sample(range(6), 3)
    shuffled = rng.sample(range(6), 6)
    assert run(subset) == {i: everyone[i] for i in subset}
    assert run(shuffled) == everyone


def test_sync_free_nucleus_equals_search() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.cat([torch.randn(3, 5000, generator=gen) * 6, torch.randn(3, 5000) * 0.1])
    top_k = torch.tensor([0, 40, 0, 0, 7, 0])
    top_p = torch.tensor([0.9, 0.5, 1.0, 0.99, 1.0, 0.3])
    a = filter_rows(logits, top_k, 40, top_p, sync_free=False)
    b = filter_rows(logits, top_k, 40, top_p, sync_free=True)
    assert torch.equal(torch.isfinite(a), torch.isfinite(b))
    assert torch.isfinite(a[2]).all() and torch.isfinite(a[5]).sum() < 5000


# -- op counts and host transfers ----------------------------------------------

# Ops whose result the host must wait for on an accelerator.
HOST_SYNC_OPS = {
    "aten._local_scalar_dense.default",
    "aten.item.default",
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.unique_dim.default",
    "aten.repeat_interleave.Tensor",
}


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.to_host = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        self.ops[name] += 1
        if name.startswith("aten._to_copy") and kwargs.get("device") == torch.device("cpu"):
            self.to_host += 1  # an explicit move to the host (a no-op copy on CPU)
        if name.startswith("aten.copy_") and args[0].device != args[1].device:
            self.to_host += 1
        if name in HOST_SYNC_OPS:
            self.to_host += 1
        return func(*args, **kwargs)


KINDS: dict[str, list[dict[str, Any]]] = {
    "greedy": [{"greedy": True, "strategy": "low_confidence_dynamic", "logprobs": None}],
    "sampled+seeded+greedy": [
        {"greedy": True, "strategy": "low_confidence_static", "logprobs": None},
        {"greedy": False, "strategy": "low_confidence_static", "logprobs": None},
    ],
    "mixed strategies": [
        {"greedy": True, "strategy": s, "logprobs": None, "min_tokens": 0} for s in STRATEGIES
    ],
    "min_tokens+logprobs": [
        {"greedy": g, "strategy": "low_confidence_dynamic", "logprobs": 3, "min_tokens": 8}
        for g in (True, False)
    ],
}


def count_step(kinds: list[dict[str, Any]], batch: int, mode: str) -> OpCounter:
    rng = random.Random(batch)
    blocks = []
    for i in range(batch):
        kind = {"block": 4, "rules": False, "min_tokens": 0, **kinds[i % len(kinds)]}
        block = random_block(rng, kind)
        if not block.sampling.greedy:
            block = BlockStep(**{**block.__dict__, "sampling": Sampling(0.8, 20, 0.9)})
        blocks.append(block)
    pack = pack_step(blocks, [rows_of(b) for b in blocks], M, V)
    logits = torch.cat([random_logits(rng, rows_of(b)) for b in blocks])
    counter = OpCounter()
    with counter:
        # The accelerator path: the CPU path chunks rows and its nucleus
        # search reads a flag on the host each round.
        denoise_batch(logits, pack, logprobs_mode=mode, inplace=True, cpu_path=False)
    return counter


@pytest.mark.parametrize("name", list(KINDS))
def test_ops_per_step_do_not_grow_with_the_batch(name: str) -> None:
    kinds = KINDS[name]
    sizes = (len(kinds), 8, 64) if len(kinds) > 1 else (1, 8, 64)
    counts = {}
    for batch in sizes:
        counter = count_step(kinds, batch, "raw_logprobs")
        counts[batch] = sum(counter.ops.values())
        assert counter.to_host == 1, (batch, counter.ops)
    assert len(set(counts.values())) == 1, counts


def test_processed_logprobs_ops_do_not_grow() -> None:
    kinds = KINDS["min_tokens+logprobs"]
    a = count_step(kinds, 2, "processed_logprobs")
    b = count_step(kinds, 64, "processed_logprobs")
    assert a.ops == b.ops and a.to_host == b.to_host == 1


def test_op_counts_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """Not an assertion: the per-step op counts, for the record (-s)."""
    for name, kinds in KINDS.items():
        sizes = (len(kinds), 8, 64)
        counts = [sum(count_step(kinds, n, "raw_logprobs").ops.values()) for n in sizes]
        print(f"ops per step, {name}: batch {sizes} = {counts}")


# -- the hashed noise ----------------------------------------------------------


def test_hash_uniform_moments_and_range() -> None:
    keys = torch.tensor([step_noise(7, 0, s).slot_key(j) for s in range(50) for j in range(20)])
    u = hash_uniform(keys, 1000).double()
    assert u.min() > 0.0 and u.max() < 1.0
    assert abs(u.mean().item() - 0.5) < 2e-3
    assert abs(u.var().item() - 1 / 12) < 2e-3
    # Neighbouring tokens and neighbouring rows are uncorrelated.
    c = u - 0.5
    assert abs((c[:, 1:] * c[:, :-1]).mean().item()) < 1e-3
    assert abs((c[1:] * c[:-1]).mean().item()) < 1e-3
    # 64 equal bins: a chi-square with 63 degrees of freedom (p = 1e-4 at 117).
    bins = torch.bincount((u * 64).long().flatten(), minlength=64).double()
    expected = u.numel() / 64
    assert ((bins - expected) ** 2 / expected).sum().item() < 117


def chi_square(counts: Counter[int], probs: torch.Tensor, n: int) -> float:
    expected = probs * n
    observed = torch.tensor([counts.get(i, 0) for i in range(len(probs))], dtype=torch.float64)
    return float(((observed - expected) ** 2 / expected).sum())


def draws(make_noise: Callable[[int], Any], logits: torch.Tensor, steps: int) -> Counter[int]:
    sampling = Sampling(temperature=1.0)
    counts: Counter[int] = Counter()
    for step in range(steps):
        x0, _, _ = propose(logits, sampling, make_noise(step), with_entropy=False)
        counts.update(x0.tolist())
    return counts


def test_seeded_draws_follow_the_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).expand(64, 6)
    probs = torch.softmax(logits[0].double(), dim=0)
    steps = 300
    counts = draws(lambda step: step_noise(1234, 8, step), logits, steps)
    n = steps * 64
    # 5 degrees of freedom: 25.7 is the p = 1e-4 quantile.
    assert chi_square(counts, probs, n) < 25.7
    # The test can fail: the same draws against a slightly different law.
    wrong = torch.softmax(logits[0].double() * 1.1, dim=0)
    assert chi_square(counts, wrong, n) > 100


def test_step_noise_keys_differ_per_part() -> None:
    base = step_noise(1, 4, 2)
    keys = {
        base.slot_key(0),
        base.slot_key(1),
        step_noise(2, 4, 2).slot_key(0),
        step_noise(1, 8, 2).slot_key(0),
        step_noise(1, 4, 3).slot_key(0),
    }
    assert len(keys) == 5 and all(0 <= k < 2**32 for k in keys)


def test_to_host_is_the_only_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = step_module._to_host

    def spy(t: torch.Tensor) -> np.ndarray:
        calls.append(t.shape)
        return real(t)

    monkeypatch.setattr(step_module, "_to_host", spy)
    rng = random.Random(0)
    blocks = [random_block(rng) for _ in range(8)]
    pack = pack_step(blocks, [rows_of(b) for b in blocks], M, V)
    denoise_batch(torch.cat([random_logits(rng, rows_of(b)) for b in blocks]), pack)
    assert len(calls) == 1

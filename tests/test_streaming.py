"""Committed-prefix streaming and the early finish (issue 22), in the real engine.

The engine is driven one step at a time (`LLMEngine.step`, delta outputs),
so each test sees exactly what a streaming client is sent after every
denoising forward, and the in-process scheduler's open blocks beside it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM, SamplingParams

from vllm_sdar.algorithm.decoding import decided_prefix
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.tools.stream_steps import Stream, stream_steps

from .engine_helpers import (
    STRATEGY_OPTIONS,
    assert_logprobs_match,
    assert_matches_reference,
    params,
    prompt_of,
    record_preemptions,
    scheduler_of,
    sdar_llm,
    strategy_options,
    tight_kv_llm,
)
from .test_engine_variants import mixed_workload

pytestmark = pytest.mark.engine

STRATEGIES = [strategy_options(s) for s in STRATEGY_OPTIONS]


class SentIsTheDecidedPrefix:
    """After every step, each running request has been sent exactly the
    output before its open block plus that block's decided prefix."""

    def __init__(self, llm: LLM, mask_id: int) -> None:
        self.scheduler = scheduler_of(llm)
        self.mask_id = mask_id
        self.checked = 0  # (request, step) pairs checked: must not stay 0

    def __call__(self, streams: dict[str, Stream]) -> None:
        B = self.scheduler.sdar.block_size
        # vLLM suffixes the request ids it is given ("s0" -> "s0-1a2b3c4d").
        by_id = {rid.rsplit("-", 1)[0]: state for rid, state in self.scheduler.open_blocks.items()}
        for rid, s in streams.items():
            state = by_id.get(rid)
            if state is None or s.finish_reason is not None:
                continue
            before = state.block_start + B - len(state.tokens) - len(s.prompt)
            want = max(before, 0) + decided_prefix(state.tokens, self.mask_id)
            assert len(s.token_ids) == want
            assert self.mask_id not in s.token_ids
            self.checked += 1


def checked_streams(
    llm: LLM, mask_id: int, prompts: Sequence[Sequence[int]], ps: Sequence[SamplingParams]
) -> list[Stream]:
    check = SentIsTheDecidedPrefix(llm, mask_id)
    streams = stream_steps(llm, prompts, ps, check)
    assert check.checked > len(prompts)
    return streams


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Iterator[LLM]:
    with sdar_llm(tiny_dense) as engine:
        yield engine


def _with(ps: Sequence[SamplingParams], **changes: Any) -> list[SamplingParams]:
    """The same requests (SDAR options included) with other sampling fields."""
    return [
        params(max_tokens=p.max_tokens, ignore_eos=p.ignore_eos, **(p.extra_args or {}),
               **{k: v(i) if callable(v) else v for k, v in changes.items()})
        for i, p in enumerate(ps)
    ]  # fmt: skip


def _workload(block: int, seeded: bool) -> tuple[list[list[int]], list[SamplingParams]]:
    prompts, ps = mixed_workload(block, n=8, seed=3 if seeded else 0)
    if seeded:
        ps = _with(ps, temperature=0.9, top_p=0.95, seed=lambda i: 100 + i)
    return prompts, ps


# Tests with an engine of their own run first: shutting an in-process engine
# down tears down the process's distributed state, which the module's shared
# engine (created on first use below) would lose.


@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_stream_equals_reference_b8(tiny_dense_b8: Path, seeded: bool) -> None:
    ref8 = ReferenceDecoder(tiny_dense_b8)
    prompts, ps = _workload(8, seeded)
    with sdar_llm(tiny_dense_b8) as llm8:
        streams = checked_streams(llm8, ref8.mask_id, prompts, ps)
    for prompt, p, s in zip(prompts, ps, streams, strict=True):
        want = ref8.generate_one(prompt, RequestSettings.from_params(p))
        assert s.token_ids == want.token_ids
        assert s.forwards == want.num_denoise_forwards


@pytest.mark.mrv2
def test_preemption_in_a_partly_streamed_block(tiny_dense: Path, ref: ReferenceDecoder) -> None:
    """A KV cache too small for the batch: requests are preempted while
    their open block has streamed slots; they resume with those slots as
    final, and the streams still equal the reference."""
    rng = random.Random(11)
    prompts = [prompt_of(rng.randrange(60, 200), salt=i) for i in range(8)]
    ps = [
        params(
            max_tokens=rng.randrange(40, 90), ignore_eos=True,
            **STRATEGIES[i % len(STRATEGIES)],
        )
        for i in range(len(prompts))
    ]  # fmt: skip
    with tight_kv_llm(tiny_dense) as small:

        def inside_a_streamed_block(scheduler: Any, request: Any) -> bool:
            state = scheduler.open_blocks[request.request_id]  # the engine's own id
            return 0 < state.sent < len(state.tokens)

        with record_preemptions(small, inside_a_streamed_block) as partly_streamed:
            streams = checked_streams(small, ref.mask_id, prompts, ps)
    assert partly_streamed, "the workload was meant to preempt inside a streamed block"
    for prompt, p, s in zip(prompts, ps, streams, strict=True):
        want = ref.generate_one(prompt, RequestSettings.from_params(p))
        assert s.token_ids == want.token_ids


@pytest.mark.mrv2
@pytest.mark.parametrize("seeded", [False, True], ids=["greedy", "seeded"])
def test_stream_equals_whole_equals_reference_b4(
    llm: LLM, ref: ReferenceDecoder, seeded: bool
) -> None:
    prompts, ps = _workload(4, seeded)  # every strategy, several denoising_steps
    streams = checked_streams(llm, ref.mask_id, prompts, ps)
    whole = assert_matches_reference(llm, ref, prompts, ps)
    for s, w in zip(streams, whole, strict=True):
        assert s.token_ids == list(w.token_ids)
        assert s.text == w.text
        assert s.finish_reason == w.finish_reason
        assert s.forwards == sum(w.spec_decode_metrics.histogram)
    # Prefix streaming really sends inside blocks: more chunks than blocks.
    blocks = sum(-(-len(s.token_ids) // 4) for s in streams)
    assert sum(len(s.chunks) for s in streams) > blocks


def test_block_granularity_sends_whole_blocks(llm: LLM) -> None:
    prompt = prompt_of(6)  # tail of 2: the first block has 2 generated slots
    p = params(max_tokens=12, ignore_eos=True, remasking_strategy="sequential")
    (prefix,) = stream_steps(llm, [prompt], [p])
    p_block = params(
        max_tokens=12, ignore_eos=True, remasking_strategy="sequential",
        stream_granularity="block",
    )  # fmt: skip
    (block,) = stream_steps(llm, [prompt], [p_block])
    assert block.token_ids == prefix.token_ids
    assert [len(c) for c in block.chunks] == [2, 4, 4, 2]
    assert [len(c) for c in prefix.chunks] == [1] * 12  # one slot per step, left to right


@pytest.mark.mrv2
def test_early_finish_at_max_tokens_saves_forwards(llm: LLM, ref: ReferenceDecoder) -> None:
    # Sequential decides one slot per step, left to right: 6 tokens take 6
    # forwards, where finishing the second block would take 8.
    prompt = prompt_of(8)
    p = params(max_tokens=6, ignore_eos=True, remasking_strategy="sequential")
    (s,) = stream_steps(llm, [prompt], [p])
    assert len(s.token_ids) == 6 and s.finish_reason == "length"
    assert s.forwards == 6
    assert s.token_ids == ref.generate_one(prompt, RequestSettings.from_params(p)).token_ids


def _first_new(tokens: list[int], start: int) -> int:
    """The first index >= start whose token does not occur before it."""
    return next(i for i in range(start, len(tokens)) if tokens[i] not in tokens[:i])


@pytest.mark.mrv2
def test_stop_token_in_the_prefix_finishes_at_once(llm: LLM, ref: ReferenceDecoder) -> None:
    prompt = prompt_of(8)
    free_p = params(max_tokens=12, ignore_eos=True, remasking_strategy="sequential")
    (free,) = stream_steps(llm, [prompt], [free_p])
    k = _first_new(free.token_ids, 5)  # inside the second block
    p = params(
        max_tokens=12, ignore_eos=True, remasking_strategy="sequential",
        stop_token_ids=[free.token_ids[k]],
    )  # fmt: skip
    (s,) = stream_steps(llm, [prompt], [p])
    assert s.token_ids == free.token_ids[: k + 1]
    assert s.finish_reason == "stop"
    assert s.forwards == k + 1 < free.forwards  # the block's other slots never ran
    want = ref.generate_one(prompt, RequestSettings.from_params(p))
    assert (want.token_ids, want.num_denoise_forwards) == (s.token_ids, s.forwards)


def test_stop_string_in_the_prefix_finishes_early(llm: LLM, ref: ReferenceDecoder) -> None:
    # A stop *string* is found by vLLM's detokenizer in the streamed text,
    # which then aborts the request: the same saving, one step later at most.
    prompt = prompt_of(8)
    free_p = params(max_tokens=12, ignore_eos=True, remasking_strategy="sequential")
    (free,) = stream_steps(llm, [prompt], [free_p])
    tok = ref.tokenizer
    k = next(
        i
        for i in range(5, 12)
        if (piece := tok.decode([free.token_ids[i]])).strip().isalnum()
        and piece not in tok.decode(free.token_ids[:i])
    )
    stop = tok.decode([free.token_ids[k]])
    p = params(max_tokens=12, ignore_eos=True, remasking_strategy="sequential", stop=[stop])
    (s,) = stream_steps(llm, [prompt], [p])
    assert s.finish_reason == "stop"
    assert stop not in s.text and free.text.startswith(s.text)
    # One request, prompt of whole blocks: one forward per engine step.
    assert free.steps == free.forwards
    assert s.steps <= k + 1 < free.forwards


@pytest.mark.mrv2
def test_logprobs_stream_with_their_tokens(llm: LLM, ref: ReferenceDecoder) -> None:
    prompts, ps = mixed_workload(4, n=4, seed=7)
    ps = _with(ps, logprobs=2)
    streams = stream_steps(llm, prompts, ps)
    for prompt, p, s in zip(prompts, ps, streams, strict=True):
        assert len(s.logprobs) == len(s.token_ids)
        for position, token in zip(s.logprobs, s.token_ids, strict=True):
            assert token in position  # each chunk's rows are its own tokens'
        want = ref.generate_one(prompt, RequestSettings.from_params(p))
        assert_logprobs_match(s.logprobs, want.logprobs)

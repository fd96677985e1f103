"""Several denoising steps per engine iteration (steps_per_iteration, issue 21).

Every k must give the reference's tokens, finish reasons, forward counts and
logprobs; and the engine must really run several forwards per iteration.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from vllm_sdar.algorithm.reference import GrammarSpec, ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings

from .engine_helpers import (
    STRATEGY_OPTIONS,
    assert_matches_reference,
    denoise_forwards,
    engine_steps,
    generate_ids,
    params,
    prompt_of,
    record_preemptions,
    sdar_llm,
    tight_kv_llm,
)

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module", params=[2, "block"], ids=["k2", "kblock"])
def k(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture(scope="module")
def llm(tiny_dense: Path, k: Any) -> Iterator[LLM]:
    with sdar_llm(tiny_dense, hf_overrides={"steps_per_iteration": k}) as engine:
        yield engine


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


@pytest.mark.parametrize(
    ("prompt_len", "max_tokens", "iterations"),
    [
        # 2 prompt slots share the first block: 2 + 4 + 4 forwards, and
        # every iteration's open slots are at least half its tokens.
        (2, 10, {2: 5, "block": 3}),
        # 8 prompt tokens ride along with the first step: the loop stops
        # after it (open slots 4 of 12 scheduled), the next iteration
        # carries the block alone. Commit + block iterations go on (4 of 8).
        (8, 12, {2: 3 + 2 + 2, "block": 2 + 1 + 1}),
    ],
)
def test_iterations_run_several_forwards(
    llm: LLM, ref: ReferenceDecoder, k: Any, prompt_len: int, max_tokens: int, iterations: dict
) -> None:
    p = params(max_tokens=max_tokens, remasking_strategy="sequential", ignore_eos=True)
    with engine_steps(llm) as steps:
        (out,) = assert_matches_reference(llm, ref, [prompt_of(prompt_len, salt=1)], [p])
    # sequential: one slot per forward.
    assert denoise_forwards(out) == max_tokens
    assert len(steps) == iterations[k]


def test_early_finish_inside_a_block(llm: LLM, ref: ReferenceDecoder) -> None:
    prompt = prompt_of(5)
    sequential = params(max_tokens=16, remasking_strategy="sequential", ignore_eos=True)
    free = ref.generate_one(prompt, RequestSettings.from_params(sequential))
    stop = free.token_ids[6]
    ps = [
        params(max_tokens=16, stop_token_ids=[stop], remasking_strategy="sequential"),
        params(max_tokens=6, remasking_strategy="sequential", ignore_eos=True),
        params(max_tokens=16, min_tokens=10, stop_token_ids=[free.token_ids[1]]),
    ]
    outs = assert_matches_reference(llm, ref, [prompt] * 3, ps)
    assert outs[0].finish_reason == "stop" and outs[1].finish_reason == "length"


def test_structured_request_beside_unconstrained(llm: LLM, ref: ReferenceDecoder) -> None:
    choices = ["alpha", "beta gamma"]
    structured = params(max_tokens=8, structured_outputs=StructuredOutputsParams(choice=choices))
    free = params(max_tokens=10, remasking_strategy="sequential", ignore_eos=True)
    prompts = [prompt_of(5), prompt_of(9, salt=2)]
    got = generate_ids(llm, prompts, [structured, free])
    assert got[0].text in choices
    request = dataclasses.replace(
        RequestSettings.from_params(structured), structured=GrammarSpec(choice=tuple(choices))
    )
    assert list(got[0].token_ids) == ref.generate_one(prompts[0], request).token_ids
    assert_matches_reference(llm, ref, prompts[1:], [free], got=got[1:])


def test_streamed_deltas_add_up(llm: LLM) -> None:
    p = params(max_tokens=14, remasking_strategy="sequential", ignore_eos=True)
    (whole,) = generate_ids(llm, [prompt_of(7)], p)
    delta = params(
        max_tokens=14,
        remasking_strategy="sequential",
        ignore_eos=True,
        output_kind=RequestOutputKind.DELTA,
    )
    engine = llm.llm_engine
    engine.add_request("stream-0", {"prompt_token_ids": prompt_of(7)}, delta)
    chunks: list[list[int]] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.outputs[0].token_ids:
                chunks.append(list(out.outputs[0].token_ids))
    assert [t for c in chunks for t in c] == list(whole.token_ids)
    assert len(chunks) > 1


def test_preemption_chunked_prefill_and_recompute(tiny_dense: Path, ref: ReferenceDecoder) -> None:
    """8 long requests over 6 KV pages, a 64-token step budget: prompt chunks
    ride along in every inner forward (their KV rewrite is idempotent)."""
    rng = random.Random(5)
    prompts = [prompt_of(rng.randrange(60, 200), salt=i) for i in range(8)]
    ps = [
        params(
            max_tokens=rng.randrange(40, 90),
            remasking_strategy=s,
            ignore_eos=True,
            **STRATEGY_OPTIONS[s],
        )
        for s in list(STRATEGY_OPTIONS) * 2
    ]
    overrides = {"steps_per_iteration": "block"}
    with (
        tight_kv_llm(tiny_dense, hf_overrides=overrides) as engine,
        record_preemptions(engine) as preempted,
    ):
        assert_matches_reference(engine, ref, prompts, ps)
    assert preempted, "the tight KV cache should have forced a preemption"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps_per_iteration": 0}, "steps_per_iteration"),
        ({"steps_per_iteration": "all"}, "steps_per_iteration"),
    ],
)
def test_bad_value_refused_at_start(tiny_dense: Path, overrides: dict, message: str) -> None:
    with pytest.raises(Exception, match=message), sdar_llm(tiny_dense, hf_overrides=overrides):
        pass


def test_lora_refused_at_start(tiny_dense: Path) -> None:
    with (
        pytest.raises(Exception, match="steps_per_iteration > 1 with --enable-lora"),
        sdar_llm(tiny_dense, hf_overrides={"steps_per_iteration": 2}, enable_lora=True),
    ):
        pass

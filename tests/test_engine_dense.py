"""The real vLLM engine (CPU) on the tiny dense B=4 checkpoint vs the reference."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM
from vllm.exceptions import VLLMValidationError

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings

from .engine_helpers import (
    STRATEGY_OPTIONS,
    assert_matches_reference,
    denoise_forwards,
    engine_steps,
    generate_ids,
    on_model_runner_v2,
    params,
    prompt_of,
    scheduler_of,
    sdar_llm,
    spying,
)

pytestmark = [pytest.mark.engine, pytest.mark.mrv2]

B = 4
PROMPT_LENGTHS = [1, B - 1, B, B + 1, 3 * B + 2]


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Iterator[LLM]:
    with sdar_llm(tiny_dense) as engine:
        yield engine


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


@pytest.mark.parametrize("strategy", list(STRATEGY_OPTIONS))
def test_greedy_equals_reference(llm: LLM, ref: ReferenceDecoder, strategy: str) -> None:
    prompts, ps = [], []
    for steps in (B, 2, 3):  # steps = B, dividing B, not dividing B
        for length in PROMPT_LENGTHS:
            prompts.append(prompt_of(length))
            ps.append(
                params(
                    max_tokens=10,  # ends inside a block for every prompt length here
                    remasking_strategy=strategy,
                    denoising_steps=steps,
                    ignore_eos=True,
                    **STRATEGY_OPTIONS[strategy],
                )
            )
    outs = assert_matches_reference(llm, ref, prompts, ps)
    assert all(len(o.token_ids) == 10 and o.finish_reason == "length" for o in outs)


def test_dynamic_threshold_changes_the_schedule(llm: LLM, ref: ReferenceDecoder) -> None:
    """Guard against a threshold that never bites: dynamic must save forwards here."""
    prompt = prompt_of(9)
    static, dynamic = generate_ids(
        llm,
        [prompt, prompt],
        [
            params(max_tokens=24, remasking_strategy="low_confidence_static", ignore_eos=True),
            params(max_tokens=24, confidence_threshold=0.25, ignore_eos=True),
        ],
    )
    assert denoise_forwards(dynamic) < denoise_forwards(static)


def test_batch_of_16_mixed_prompts(llm: LLM, ref: ReferenceDecoder) -> None:
    rng = random.Random(7)
    strategies = list(STRATEGY_OPTIONS)
    prompts, ps = [], []
    for i in range(16):
        prompts.append(prompt_of(rng.randrange(1, 40), salt=i))
        strategy = strategies[i % 4]
        ps.append(
            params(
                max_tokens=rng.randrange(1, 20),
                remasking_strategy=strategy,
                denoising_steps=rng.choice([1, 2, 4]),
                ignore_eos=True,
                **STRATEGY_OPTIONS[strategy],
            )
        )
    assert_matches_reference(llm, ref, prompts, ps)


def test_stop_token_inside_block(llm: LLM, ref: ReferenceDecoder) -> None:
    prompt = prompt_of(5)
    free = ref.generate_one(
        prompt, RequestSettings.from_params(params(max_tokens=16, ignore_eos=True))
    )
    stop = free.token_ids[6]  # slot 2 of the second generated block
    first = free.token_ids.index(stop)
    (out,) = assert_matches_reference(
        llm, ref, [prompt], [params(max_tokens=16, stop_token_ids=[stop])]
    )
    assert list(out.token_ids) == free.token_ids[: first + 1]
    assert out.finish_reason == "stop"


def test_min_tokens_holds_back_stop_tokens(llm: LLM, ref: ReferenceDecoder) -> None:
    prompt = prompt_of(5)
    free = ref.generate_one(
        prompt, RequestSettings.from_params(params(max_tokens=16, ignore_eos=True))
    )
    stop = free.token_ids[1]  # would end the output at 2 tokens
    (out,) = assert_matches_reference(
        llm, ref, [prompt], [params(max_tokens=16, min_tokens=10, stop_token_ids=[stop])]
    )
    assert len(out.token_ids) >= 10
    assert stop not in out.token_ids[:9]


def test_mask_token_in_the_prompt_is_context(llm: LLM, ref: ReferenceDecoder) -> None:
    """A prompt may contain the MASK id (a literal "<|MASK|>" in user text):
    it stays context, also in the tail that shares the first block."""
    mask = ref.mask_id
    # Not an all-MASK prompt: then every open slot sees identical inputs, its
    # logits rows are equal in exact arithmetic, and which slot wins the
    # confidence tie is decided by float rounding (vLLM's kernels vs the
    # reference), not by the rules under test.
    prompts = [prompt_of(4) + [mask, mask], [mask] * 4 + [9, mask], [mask, 7, mask]]
    outs = assert_matches_reference(llm, ref, prompts, params(max_tokens=6, ignore_eos=True))
    assert all(mask not in o.token_ids and len(o.token_ids) == 6 for o in outs)


def test_stop_string_cuts_text(llm: LLM, ref: ReferenceDecoder) -> None:
    prompt = prompt_of(6)
    (free,) = generate_ids(llm, [prompt], params(max_tokens=16, ignore_eos=True))
    tokenizer = llm.get_tokenizer()
    stop_text = tokenizer.decode(free.token_ids[5:7])
    (out,) = generate_ids(llm, [prompt], params(max_tokens=16, ignore_eos=True, stop=[stop_text]))
    assert out.finish_reason == "stop"
    assert stop_text not in out.text
    assert free.text.startswith(out.text)
    assert list(free.token_ids[: len(out.token_ids)]) == list(out.token_ids)


def test_seeded_sampling_matches_reference_alone_or_batched(
    llm: LLM, ref: ReferenceDecoder
) -> None:
    prompt = prompt_of(7)
    seeded = params(max_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    (alone,) = assert_matches_reference(llm, ref, [prompt], [seeded])
    others = [prompt_of(n, salt=3) for n in (2, 11, 30)]
    batch = generate_ids(
        llm,
        others + [prompt],
        [params(max_tokens=9, temperature=1.0, ignore_eos=True)] * 3 + [seeded],
    )
    assert list(batch[-1].token_ids) == list(alone.token_ids)
    (other_seed,) = generate_ids(
        llm, [prompt], params(max_tokens=12, temperature=0.9, top_p=0.9, top_k=50, seed=99)
    )
    assert list(other_seed.token_ids) != list(alone.token_ids)


def test_n_samples_differ(llm: LLM) -> None:
    outs = llm.generate(
        [{"prompt_token_ids": prompt_of(4)}],
        params(max_tokens=8, temperature=1.0, n=3, seed=5, ignore_eos=True),
        use_tqdm=False,
    )[0].outputs
    assert len(outs) == 3
    assert len({tuple(o.token_ids) for o in outs}) == 3


@pytest.mark.parametrize("length", [3, 4, 14])
def test_one_forward_per_denoising_step(llm: LLM, ref: ReferenceDecoder, length: int) -> None:
    prompt = prompt_of(length, salt=11)
    p = params(max_tokens=10, remasking_strategy="low_confidence_static", ignore_eos=True)
    with engine_steps(llm) as steps:
        (out,) = generate_ids(llm, [prompt], p)
    want = ref.generate_one(prompt, RequestSettings.from_params(p))
    assert list(out.token_ids) == want.token_ids
    # Whole prompt blocks ride with the first step, each commit with the next
    # block's first step, the last block needs none: forwards = steps used.
    assert len(steps) == denoise_forwards(out) == want.num_denoise_forwards
    prefill = 1 if length >= B else 0
    blocks = -(-(10 + length % B) // B)
    assert want.num_forwards == want.num_denoise_forwards + prefill + (blocks - 1)
    assert len(steps) < want.num_forwards
    # The first step carries the prompt's whole blocks plus the first block.
    first_step = next(iter(steps[0].values()))
    assert first_step == (length // B) * B + B


def test_prefix_cache_hits_keep_outputs(llm: LLM, ref: ReferenceDecoder) -> None:
    shared = prompt_of(300, salt=21)  # > 2 KV pages of 128 tokens
    prompts = [shared + prompt_of(n, salt=22) for n in (1, 4, 6)]
    p = params(max_tokens=9, confidence_threshold=0.25, ignore_eos=True)
    manager = scheduler_of(llm).kv_cache_manager
    assert manager.enable_caching
    hits: list[int] = []
    with spying(manager, "get_computed_blocks", after=lambda result, _: hits.append(result[1])):
        first = assert_matches_reference(llm, ref, prompts, p)
        again = generate_ids(llm, prompts, p)
    assert [list(o.token_ids) for o in again] == [list(o.token_ids) for o in first]
    assert max(hits) >= 256 and all(h % B == 0 for h in hits)


@pytest.mark.parametrize(
    "extra,name",
    [
        ({"denoising_steps": 5}, "denoising_steps"),
        ({"denoising_steps": 0}, "denoising_steps"),
        ({"remasking_strategy": "random"}, "remasking_strategy"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"confidence_threshold": 0}, "confidence_threshold"),
        ({"eb_threshold": -0.1}, "eb_threshold"),
        ({"prompt_logprobs": 2}, "prompt_logprobs"),
    ],
)
def test_invalid_options_rejected_engine_survives(llm: LLM, extra: dict, name: str) -> None:
    sdar = {k: v for k, v in extra.items() if k == "prompt_logprobs"}
    bad = params(max_tokens=4, **{k: v for k, v in extra.items() if k not in sdar}, **sdar)
    # A ValueError as the brief asks, and vLLM's own validation error type.
    with pytest.raises(ValueError, match=name) as err:
        generate_ids(llm, [prompt_of(5)], bad)
    assert isinstance(err.value, VLLMValidationError)
    assert err.value.parameter == name
    (ok,) = generate_ids(llm, [prompt_of(5)], params(max_tokens=4, ignore_eos=True))
    assert len(ok.token_ids) == 4


def test_structured_outputs_choice_matches_reference(llm: LLM, ref: ReferenceDecoder) -> None:
    """Structured outputs work (issue 23; the rule's tests: test_engine_structured.py)."""
    import dataclasses

    from vllm.sampling_params import StructuredOutputsParams

    from vllm_sdar.algorithm.reference import GrammarSpec

    choices = ["alpha", "beta gamma"]
    p = params(max_tokens=8, structured_outputs=StructuredOutputsParams(choice=choices))
    (out,) = generate_ids(llm, [prompt_of(5)], p)
    assert out.text in choices and out.finish_reason == "stop"
    spec = GrammarSpec(choice=tuple(choices))
    request = dataclasses.replace(RequestSettings.from_params(p), structured=spec)
    assert list(out.token_ids) == ref.generate_one(prompt_of(5), request).token_ids


def _worker_runner_name(worker: Any) -> str:
    return type(worker.model_runner).__name__


def test_engine_in_its_own_process_equals_reference(
    tiny_dense: Path, ref: ReferenceDecoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's default, as users run it: the engine core in a child process
    (which inherits the MRV2 test shim through PYTHONPATH in that pass),
    greedy and seeded, logprobs included, on the runner this pass runs."""
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    monkeypatch.setenv("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # the rpc's callable
    prompts = [prompt_of(n, salt=9) for n in (2, 4, 9)]
    ps = [
        params(max_tokens=11, ignore_eos=True, logprobs=2),
        params(max_tokens=9, temperature=0.8, seed=7, ignore_eos=True),
        params(max_tokens=12, remasking_strategy="sequential", ignore_eos=True),
    ]
    want = "SdarCPUModelRunnerV2" if on_model_runner_v2() else "SdarCPUModelRunner"
    with sdar_llm(tiny_dense) as engine:
        assert engine.collective_rpc(_worker_runner_name) == [want]
        assert_matches_reference(engine, ref, prompts, ps)

"""Structured outputs in the real engine vs the reference decoder (issue 23).

Random-weight checkpoints with the real SDAR tokenizer: dense B=4 (xgrammar,
no free whitespace), dense B=8 in a KV cache too small for its batch
(preemption), MoE B=4 (vLLM's default backend choice, free whitespace).
Every output must parse and satisfy its constraint, and equal the reference
decoder's tokens, finish reason and number of denoising forwards, which
implements the same rule with xgrammar (greedy and seeded, every strategy,
batched with unconstrained requests that must not change).

The constraints are finite (bounded integers, enums, bounded repetitions):
a random network has no reason to ever close a free string.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM, SamplingParams
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import StructuredOutputsParams

from vllm_sdar.algorithm.reference import GrammarSpec, ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings

from .engine_helpers import (
    STRATEGY_OPTIONS,
    denoise_forwards,
    generate_ids,
    params,
    prompt_of,
    record_preemptions,
    scheduler_of,
    sdar_llm,
    spying,
)

pytestmark = pytest.mark.engine

# Sequential with fewer steps than slots: its runs of several slots meet the grammar.
STRATEGY_OPTIONS = {**STRATEGY_OPTIONS, "sequential": {"denoising_steps": 2}}
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "c": {"enum": ["red", "green", "blue"]},
        "b": {"type": "boolean"},
    },
    "required": ["n", "c", "b"],
    "additionalProperties": False,
}
CHOICES = ["yes", "no", "maybe not"]
# kind -> (constraint, full-match check of the text)
KINDS: dict[str, tuple[dict[str, Any], str | None]] = {
    "json": ({"json": SCHEMA}, None),
    "regex": ({"regex": r"[0-9]{2,6}"}, r"[0-9]{2,6}"),
    "choice": ({"choice": CHOICES}, "|".join(CHOICES)),
    "ebnf": ({"grammar": 'root ::= ("ab" | "cd") [0-9] [0-9]? "!"'}, r"(ab|cd)[0-9][0-9]?!"),
    "lark": ({"grammar": 'start: ("x" | "y") "=" DIGIT\nDIGIT: /[0-9]/'}, r"[xy]=[0-9]"),
}
STRICT = {"backend": "xgrammar", "disable_any_whitespace": True}
LONG = r"[0-9]{36,48}"  # long outputs: their KV grows past free pages (preemption)


def constrained(kind: str, **kwargs: Any) -> SamplingParams:
    """Fresh params each time: vLLM rewrites a choice into a grammar."""
    return params(structured_outputs=StructuredOutputsParams(**KINDS[kind][0]), **kwargs)


def assert_valid(kind: str, text: str) -> None:
    if kind == "json":
        value = json.loads(text)
        assert set(value) == {"n", "c", "b"}, text
        assert isinstance(value["n"], int) and 0 <= value["n"] <= 99, text
        assert value["c"] in ("red", "green", "blue") and isinstance(value["b"], bool), text
    else:
        assert re.fullmatch(KINDS[kind][1], text), (kind, text)


def spec_request(p: SamplingParams, any_whitespace: bool) -> Any:
    request = RequestSettings.from_params(p)
    so = p.structured_outputs
    spec = GrammarSpec.from_params(so, any_whitespace) if so is not None else None
    return dataclasses.replace(request, structured=spec)


def assert_matches_reference(
    llm: LLM,
    ref: ReferenceDecoder,
    prompts: Sequence[list[int]],
    ps: Sequence[SamplingParams],
    any_whitespace: bool = False,
    got: Sequence[Any] | None = None,
) -> list[Any]:
    got = got if got is not None else generate_ids(llm, prompts, ps)
    for prompt, p, out in zip(prompts, ps, got, strict=True):
        want = ref.generate_one(prompt, spec_request(p, any_whitespace))
        context = f"len {len(prompt)}, {p.extra_args}, seed {p.seed}, {p.structured_outputs}"
        assert list(out.token_ids) == want.token_ids, context
        assert out.finish_reason == want.finish_reason, context
        assert denoise_forwards(out) == want.num_denoise_forwards, context
    return list(got)


def every_kind(
    kinds: Sequence[str],
    strategies: Sequence[str],
    salt: int,
    product: bool = True,
    max_tokens: int = 24,
) -> list[tuple]:
    """(kind, prompt, params) for each kind x strategy x {greedy, seeded}, or
    (product=False) each strategy x {greedy, seeded} with the kinds in turn."""
    grid = [(s, seeded) for s in strategies for seeded in (False, True)]
    pairs = (
        [(k, g) for k in kinds for g in grid]
        if product
        else [(kinds[i % len(kinds)], g) for i, g in enumerate(grid)]
    )
    cases = []
    for i, (kind, (strategy, seeded)) in enumerate(pairs):
        sampling = {"temperature": 1.0, "top_p": 0.95, "seed": i} if seeded else {}
        p = constrained(
            kind,
            max_tokens=max_tokens,
            remasking_strategy=strategy,
            **STRATEGY_OPTIONS[strategy],
            **sampling,
        )
        cases.append((kind, prompt_of(1 + i % 9, salt=salt), p))
    return cases


# -- dense B=4 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Iterator[LLM]:
    with sdar_llm(tiny_dense, structured_outputs_config=STRICT) as engine:
        yield engine


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


@pytest.mark.mrv2
def test_every_kind_strategy_greedy_and_seeded_is_valid_and_equals_reference(
    llm: LLM, ref: ReferenceDecoder
) -> None:
    cases = every_kind(["json", "regex", "choice"], list(STRATEGY_OPTIONS), salt=1)
    prompts = [c[1] for c in cases]
    ps = [c[2] for c in cases]
    got = assert_matches_reference(llm, ref, prompts, ps)  # all in one batch
    for (kind, _, _), out in zip(cases, got, strict=True):
        assert out.finish_reason == "stop", (kind, out.text)
        assert_valid(kind, out.text)


@pytest.mark.mrv2
def test_lark_json_object_structural_tag_and_logprobs(llm: LLM, ref: ReferenceDecoder) -> None:
    # A structural tag: what vLLM's tool parsers (hermes by default) constrain
    # tool calls with; here one finite tag.
    tag = {"type": "structural_tag", "format": {"type": "tag", "begin": "<a>", "content": {
        "type": "json_schema", "json_schema": {"enum": ["x", "y"]}}, "end": "</a>"}}  # fmt: skip
    ps = [
        params(max_tokens=30, structured_outputs=StructuredOutputsParams(json_object=True)),
        constrained("lark", max_tokens=8, logprobs=2),
        params(
            max_tokens=12,
            structured_outputs=StructuredOutputsParams(structural_tag=json.dumps(tag)),
        ),
    ]
    obj, lark, tagged = assert_matches_reference(llm, ref, [prompt_of(5, salt=0)] * 3, ps)
    assert obj.finish_reason == "stop" and isinstance(json.loads(obj.text), dict)
    assert_valid("lark", lark.text)
    assert len(lark.logprobs) == len(lark.token_ids)
    assert tagged.finish_reason == "stop" and tagged.text in ('<a>"x"</a>', '<a>"y"</a>')


def test_unconstrained_requests_are_unchanged_by_structured_neighbours(llm: LLM) -> None:
    strategies = list(STRATEGY_OPTIONS)
    free = [
        params(
            max_tokens=14,
            ignore_eos=True,
            remasking_strategy=s,
            **STRATEGY_OPTIONS[s],
            **({"temperature": 0.9, "seed": i} if i % 2 else {}),
        )
        for i, s in enumerate(strategies * 2)
    ]
    free_prompts = [prompt_of(3 + i, salt=5) for i in range(len(free))]
    alone = generate_ids(llm, free_prompts, free)
    cases = every_kind(["json", "regex", "choice"], strategies[:2], salt=6, product=False)
    mixed = generate_ids(llm, free_prompts + [c[1] for c in cases], free + [c[2] for c in cases])
    for a, m in zip(alone, mixed[: len(free)], strict=True):
        assert list(m.token_ids) == list(a.token_ids)
        assert denoise_forwards(m) == denoise_forwards(a)
    for (kind, _, _), out in zip(cases, mixed[len(free) :], strict=True):
        assert_valid(kind, out.text)


@pytest.mark.mrv2
def test_prefix_cache_hits_with_structured_requests(llm: LLM, ref: ReferenceDecoder) -> None:
    shared = prompt_of(300, salt=31)  # > 2 KV pages
    prompts = [shared + prompt_of(n, salt=32) for n in (1, 4, 6)]
    kinds = ["regex", "json", "choice"]
    manager = scheduler_of(llm).kv_cache_manager
    hits: list[int] = []
    with spying(manager, "get_computed_blocks", after=lambda result, _: hits.append(result[1])):
        first = assert_matches_reference(
            llm, ref, prompts, [constrained(k, max_tokens=24) for k in kinds]
        )
        again = generate_ids(llm, prompts, [constrained(k, max_tokens=24) for k in kinds])
    assert [list(o.token_ids) for o in again] == [list(o.token_ids) for o in first]
    assert max(hits) >= 256
    for kind, out in zip(kinds, again, strict=True):
        assert_valid(kind, out.text)


def test_grammar_end_eos_min_tokens_and_n(llm: LLM, ref: ReferenceDecoder) -> None:
    """The grammar ends inside a block: EOS (its stop token) ends the request;
    under ignore_eos the rest is unconstrained (vLLM's contract); where only
    a stop token is valid the grammar wins over min_tokens."""
    prompt = prompt_of(6, salt=41)
    ps = [
        constrained("choice", max_tokens=12, ignore_eos=True),
        constrained("choice", max_tokens=12, min_tokens=8),
        constrained("regex", max_tokens=12, stop_token_ids=[15, 16]),  # digits "0", "1"
    ]
    got = assert_matches_reference(llm, ref, [prompt] * 3, ps)
    free, early, stopped = got
    assert len(free.token_ids) == 12 and free.finish_reason == "length"
    eos = ref.eos_ids
    first_eos = next(i for i, t in enumerate(free.token_ids) if t in eos)
    text = llm.get_tokenizer().decode(free.token_ids[:first_eos])
    assert text in CHOICES
    assert early.finish_reason == "stop" and len(early.token_ids) < 8
    assert_valid("choice", early.text)
    assert stopped.finish_reason == "stop"
    # n = 2 seeded: two children, two grammars, both valid.
    out = llm.generate(
        [{"prompt_token_ids": prompt}],
        constrained("json", max_tokens=30, n=2, temperature=1.0, seed=3),
        use_tqdm=False,
    )[0]
    assert len(out.outputs) == 2
    for o in out.outputs:
        assert_valid("json", o.text)


@pytest.mark.parametrize(
    "field,value",
    [
        ("regex", "[0-"),
        ("json", "{not json"),
        ("json", {"type": "nonsense"}),
        ("choice", []),
        ("grammar", "root ::= ("),
    ],
)
def test_bad_constraint_names_the_field(llm: LLM, field: str, value: Any) -> None:
    bad = params(max_tokens=4, structured_outputs=StructuredOutputsParams(**{field: value}))
    with pytest.raises(VLLMValidationError, match=f"structured_outputs.{field}") as err:
        generate_ids(llm, [prompt_of(5)], bad)
    assert err.value.parameter == f"structured_outputs.{field}"
    (ok,) = generate_ids(llm, [prompt_of(5)], params(max_tokens=4, ignore_eos=True))
    assert len(ok.token_ids) == 4


# -- dense B=8, KV cache too small: preemption and recompute ----------------------


def test_b8_preemption_every_strategy(tiny_dense_b8: Path) -> None:
    ref = ReferenceDecoder(tiny_dense_b8)
    cases = every_kind(list(KINDS), list(STRATEGY_OPTIONS), salt=51, product=False)
    prompts = [prompt_of(150 + 23 * i, salt=i) for i in range(4)]
    long_ps = [
        params(
            max_tokens=60,
            structured_outputs=StructuredOutputsParams(regex=LONG),
            remasking_strategy=s,
            **STRATEGY_OPTIONS[s],
        )
        for s in STRATEGY_OPTIONS
    ]
    with (
        sdar_llm(
            tiny_dense_b8,
            structured_outputs_config=STRICT,
            num_gpu_blocks_override=6,
            max_num_batched_tokens=64,
            max_model_len=384,
            enable_prefix_caching=False,
        ) as llm,
        record_preemptions(llm) as preempted,
    ):
        got = assert_matches_reference(
            llm, ref, prompts + [c[1] for c in cases], long_ps + [c[2] for c in cases]
        )
    assert preempted, "the workload was meant to overflow the KV cache"
    for out in got[: len(prompts)]:
        assert re.fullmatch(LONG, out.text)
    for (kind, _, _), out in zip(cases, got[len(prompts) :], strict=True):
        assert_valid(kind, out.text)


# -- MoE B=4, vLLM's default backend choice, free whitespace -----------------------


def test_moe_default_backend_every_kind(tiny_moe: Path) -> None:
    ref = ReferenceDecoder(tiny_moe)
    cases = every_kind(list(KINDS), list(STRATEGY_OPTIONS), salt=61, product=False, max_tokens=16)
    with sdar_llm(tiny_moe) as llm:
        got = assert_matches_reference(
            llm, ref, [c[1] for c in cases], [c[2] for c in cases], any_whitespace=True
        )
    for (kind, _, _), out in zip(cases, got, strict=True):
        if out.finish_reason == "stop":
            assert_valid(kind, out.text)
        else:  # free whitespace may run a random model out of tokens inside JSON
            assert kind == "json" and out.finish_reason == "length"

"""vLLM's sampling parameters on the engine equal the reference decoder.

Each parameter alone and all together, greedy and seeded, in one batch
with requests that use none (so a transform must stay on its own rows),
plus logprobs (raw, the default mode; processed in
test_engine_logprobs_mode.py: the mode is an engine setting).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from vllm import LLM

from vllm_sdar.algorithm.reference import ReferenceDecoder

from .engine_helpers import (
    assert_matches_reference,
    generate_ids,
    params,
    prompt_of,
    sdar_llm,
)

pytestmark = [pytest.mark.engine, pytest.mark.mrv2]

PROMPTS = [prompt_of(n, salt=50 + n) for n in (3, 9)]
SEEDED = {"temperature": 0.9, "seed": 1234}


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Any:
    with sdar_llm(tiny_dense) as engine:
        yield engine


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


@pytest.fixture(scope="module")
def plain(llm: LLM, ref: ReferenceDecoder) -> dict[str, list[list[int]]]:
    """Outputs without any transform (equal to the reference's), to check
    that each transform bites and that requests beside it are unchanged."""
    out = {}
    for name, extra in (("greedy", {}), ("seeded", SEEDED)):
        ps = params(max_tokens=12, ignore_eos=True, **extra)
        out[name] = [list(o.token_ids) for o in assert_matches_reference(llm, ref, PROMPTS, ps)]
    return out


def rule_sets(llm: LLM, plain: dict[str, list[list[int]]]) -> dict[str, dict[str, Any]]:
    """One entry per parameter, built from tokens the plain runs produced so
    that each transform has something to change, plus all combined."""
    first = plain["greedy"][0]
    tok = llm.get_tokenizer()
    # Words that re-tokenize to themselves (vLLM bans the word's tokens).
    single = next(tok.decode([t]) for t in first if tok.encode(tok.decode([t]))[:1] == [t])
    pair = tok.decode(first[2:4])
    allowed = sorted({t for outs in plain.values() for o in outs for t in o[::2]})
    sets = {
        "repetition_penalty": {"repetition_penalty": 1.8},
        "presence_penalty": {"presence_penalty": 1.5},
        "frequency_penalty": {"frequency_penalty": 1.2},
        "min_p": {"min_p": 0.3},
        "logit_bias": {"logit_bias": {first[0]: -100.0, first[5]: 4.0}},
        "allowed_token_ids": {"allowed_token_ids": allowed},
        "bad_words": {"bad_words": [single, pair]},
        "logprobs": {"logprobs": 3},
    }
    sets["combined"] = {k: v for s in sets.values() for k, v in s.items()}
    sets["combined"]["repetition_penalty"] = 1.3
    return sets


def with_bad_word_ids(llm: LLM, p: Any) -> Any:
    """The reference reads the token ids vLLM's front end makes of bad_words."""
    if p.bad_words:
        p.update_from_tokenizer(llm.get_tokenizer())
    return p


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_each_parameter_and_combined_match_reference(
    llm: LLM, ref: ReferenceDecoder, plain: dict[str, list[list[int]]], mode: str
) -> None:
    sets = rule_sets(llm, plain)
    extra = SEEDED if mode == "seeded" else {}
    prompts, ps, names = [], [], []
    for name, rules in sets.items():
        for prompt in PROMPTS:
            prompts.append(prompt)
            names.append(name)
            ps.append(
                with_bad_word_ids(llm, params(max_tokens=12, ignore_eos=True, **extra, **rules))
            )
    # Requests with no transforms interleaved in the same batch must come out
    # as they do alone (the `plain` outputs, equal to the reference's).
    none = params(max_tokens=12, ignore_eos=True, **extra)
    outs = generate_ids(llm, PROMPTS * len(sets) + prompts, [none] * len(prompts) + ps)
    bystanders, outs = outs[: len(prompts)], outs[len(prompts) :]
    assert [list(o.token_ids) for o in bystanders] == plain[mode] * len(sets)
    assert_matches_reference(llm, ref, prompts, ps, outs)
    changed = {
        n
        for n, prompt, o in zip(names, prompts, outs, strict=True)
        if list(o.token_ids) != plain[mode][PROMPTS.index(prompt)]
    }
    # Every transform changed some output (min_p only where sampling).
    expected = set(sets) - {"logprobs"} - ({"min_p"} if mode == "greedy" else set())
    assert expected <= changed, expected - changed


def test_bad_words_never_appear(llm: LLM, plain: dict[str, list[list[int]]]) -> None:
    sets = rule_sets(llm, plain)
    p = with_bad_word_ids(llm, params(max_tokens=24, ignore_eos=True, **sets["bad_words"]))
    outs = generate_ids(llm, PROMPTS, p)
    for out in outs:
        ids = list(out.token_ids)
        for word in p.bad_words_token_ids:
            n = len(word)
            assert all(ids[i : i + n] != word for i in range(len(ids) - n + 1)), word


def test_logprobs_greedy_token_is_top(llm: LLM) -> None:
    (out,) = generate_ids(llm, PROMPTS[:1], params(max_tokens=8, logprobs=2, ignore_eos=True))
    assert len(out.logprobs) == len(out.token_ids) == 8
    for tok, position in zip(out.token_ids, out.logprobs, strict=True):
        assert position[tok].rank == 1
        assert len(position) == 2  # the chosen token is among the top 2
    assert out.cumulative_logprob == pytest.approx(
        sum(p[t].logprob for t, p in zip(out.token_ids, out.logprobs, strict=True)), rel=1e-5
    )

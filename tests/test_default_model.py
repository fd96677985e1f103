"""The shipped default model (vllm_sdar/assets/sdar-addition) through vLLM.

It was trained (python -m vllm_sdar.convert.toy), so unlike the random tiny
checkpoints its confidences are real: dynamic decoding must commit several
tokens per forward and the answers must be right, on problems held out
from its training, and token for token what the reference decoder gives.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.convert import addition
from vllm_sdar.convert.evaluate import answer_ok, prompt_ids
from vllm_sdar.convert.toy import DEFAULT_OUT, held_out

from .engine_helpers import assert_matches_reference, denoise_forwards, params, sdar_llm

pytestmark = pytest.mark.engine

N_PROBLEMS = 60


@pytest.fixture(scope="module")
def problems() -> list[addition.Problem]:
    return held_out(N_PROBLEMS)


@pytest.fixture(scope="module")
def llm():
    # By its short name, as a user would: the plugin's redirect table points
    # it at the copy inside the package (no ./sdar-addition directory here).
    assert not Path("sdar-addition").exists()
    with sdar_llm("sdar-addition", max_model_len=256) as engine:
        config = engine.llm_engine.model_config
        assert Path(config.model) == DEFAULT_OUT and config.served_model_name == "sdar-addition"
        yield engine


def test_engine_solves_held_out_problems_like_the_reference(
    llm, problems: list[addition.Problem]
) -> None:
    ref = ReferenceDecoder(DEFAULT_OUT)
    tok = ref.tokenizer
    prompts = [prompt_ids(tok, p) for p in problems]
    dynamic = params(8, remasking_strategy="low_confidence_dynamic", confidence_threshold=0.9)
    static = params(8, remasking_strategy="low_confidence_static")
    for p in (dynamic, static):
        outs = assert_matches_reference(llm, ref, prompts, p)
        correct = sum(
            answer_ok(tok, prob, out.token_ids, ref.eos_ids) for prob, out in zip(problems, outs)
        )
        assert correct >= 0.9 * len(problems), f"{p.extra_args}: {correct}/{len(problems)}"
        tokens = sum(len(o.token_ids) for o in outs)
        forwards = sum(denoise_forwards(o) for o in outs)
        if p is dynamic:
            assert tokens / forwards > 1.5, (tokens, forwards)
        else:  # one token per step at steps = B, so at most one per forward
            assert tokens / forwards <= 1.0, (tokens, forwards)


def test_chat_template_path(llm, problems: list[addition.Problem]) -> None:
    """llm.chat renders the shipped template ("12+30" -> "12+30=") and gives
    what the token-id path gives; the answers are the sums."""
    first = problems[:20]
    chats = llm.chat(
        [[{"role": "user", "content": p.prompt}] for p in first], params(8), use_tqdm=False
    )
    tok = llm.get_tokenizer()
    direct = llm.generate(
        [{"prompt_token_ids": prompt_ids(tok, p)} for p in first], params(8), use_tqdm=False
    )
    assert [c.outputs[0].token_ids for c in chats] == [d.outputs[0].token_ids for d in direct]
    right = sum(c.outputs[0].text == p.answer for c, p in zip(chats, first))
    assert right >= 18, [(p.prompt, c.outputs[0].text) for c, p in zip(chats, first)]
    assert all(c.outputs[0].finish_reason == "stop" for c in chats)


def test_min_tokens_is_honoured(llm) -> None:
    """The issue's case: "12+34=" answers "46" then EOS (2 tokens); with
    min_tokens 8 no stop id may end the output before 8 tokens."""
    ref = ReferenceDecoder(DEFAULT_OUT)
    prompt = ref.tokenizer("12+34=")["input_ids"]
    (free,) = assert_matches_reference(llm, ref, [prompt], params(12))
    assert len(free.token_ids) < 8 and free.finish_reason == "stop"
    (held,) = assert_matches_reference(llm, ref, [prompt], params(12, min_tokens=8))
    assert len(held.token_ids) >= 8
    assert not set(held.token_ids[:7]) & ref.eos_ids

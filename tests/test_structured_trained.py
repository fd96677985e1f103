"""Structured outputs on the trained toy models: still parallel (issue 23).

sdar-addition and sdar-sort have character vocabularies (digits, '+', '=',
EOS), so digit regexes and choice lists are the constraints that make sense
there. On held-out problems, greedy, dynamic threshold 0.9 (the README's
setting), a constrained request must still emit more than one token per
denoising forward (TPF) on average, stay valid, equal the reference decoder
on a few problems, and be about as accurate as the unconstrained run.
Run with -s to see the table (docs/structured-outputs.md quotes it).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest
from vllm import SamplingParams
from vllm.sampling_params import StructuredOutputsParams

from vllm_sdar.algorithm.reference import GrammarSpec, ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.convert.evaluate import answer_ok, prompt_ids
from vllm_sdar.convert.toy import asset_dirs, held_out, trained_task

from .engine_helpers import denoise_forwards, generate_ids, sdar_llm

pytestmark = pytest.mark.engine

N = 64  # held-out problems per task
OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}
# task -> constraint kind -> (StructuredOutputsParams fields per problem, full-match regex)
SORTED = "".join(f"{d}*" for d in "0123456789")


def constraints(task: str, problem: Any) -> dict[str, tuple[dict[str, Any], str]]:
    answer = problem.answer
    if task == "addition":
        wrong = str(int(answer) + 1)
        return {
            "regex": ({"regex": r"[0-9]{1,4}"}, r"[0-9]{1,4}"),
            "choice": ({"choice": [answer, wrong]}, f"{answer}|{wrong}"),
        }
    rev = answer[::-1]
    return {
        "regex": ({"regex": SORTED}, SORTED),  # a sorted digit string
        "choice": ({"choice": [answer, rev]}, f"{answer}|{rev}"),
    }


@pytest.mark.parametrize("task", ["addition", "sort"])
def test_constrained_requests_stay_parallel_on_trained_models(task: str) -> None:
    sdar_dir = asset_dirs(task)[0]
    problems = held_out(N, sdar_dir)
    max_tokens = trained_task(sdar_dir).max_tokens
    ref = ReferenceDecoder(sdar_dir)
    tok = ref.tokenizer
    prompts = [prompt_ids(tok, p) for p in problems]

    def run(kind: str | None) -> tuple[list[Any], list[SamplingParams]]:
        ps = [
            SamplingParams(
                temperature=0,
                max_tokens=max_tokens,
                extra_args=OPTIONS,
                structured_outputs=None
                if kind is None
                else StructuredOutputsParams(**constraints(task, p)[kind][0]),
            )
            for p in problems
        ]
        return generate_ids(llm, prompts, ps), ps

    rows = []
    with sdar_llm(f"sdar-{task}", max_model_len=256) as llm:
        for kind in (None, "regex", "choice"):
            outs, ps = run(kind)
            tokens = sum(len(o.token_ids) for o in outs)
            forwards = sum(denoise_forwards(o) for o in outs)
            correct = sum(
                answer_ok(tok, p, o.token_ids, ref.eos_ids) for p, o in zip(problems, outs)
            )
            rows.append((kind or "none", tokens / forwards, correct))
            if kind is None:
                continue
            for p, o in zip(problems, outs, strict=True):
                assert o.finish_reason == "stop"
                assert re.fullmatch(constraints(task, p)[kind][1], o.text), (p, o.text)
            # The plugin equals the reference on the first problems.
            for prompt, p, o, problem in list(zip(prompts, ps, outs, problems))[:4]:
                spec = GrammarSpec.from_params(p.structured_outputs)
                want = ref.generate_one(
                    prompt, dataclasses.replace(RequestSettings.from_params(p), structured=spec)
                )
                assert list(o.token_ids) == want.token_ids, problem
                assert denoise_forwards(o) == want.num_denoise_forwards, problem
    print(f"\n{task}: constraint, tokens per forward, exact answers of {N}")
    for kind, tpf, correct in rows:
        print(f"  {kind:7s} TPF {tpf:.2f}  correct {correct}/{N}")
    unconstrained = rows[0]
    for kind, tpf, correct in rows[1:]:
        assert tpf > 1.0, (kind, tpf)
        assert correct >= unconstrained[2] - 2, (kind, correct, unconstrained[2])

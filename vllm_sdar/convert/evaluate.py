"""Scoring the toy: exact-match accuracy and tokens per forward.

Tokens per forward = tokens emitted (the stop token included) / model
forwards run for them. AR greedy pays one forward per token (the prefill
yields the first), so it is 1.0 by construction. SDAR is given two ways:
- "reference": `Result.num_forwards` of the reference decoder, which runs
  the prompt prefill and every block commit as forwards of their own;
- "fused": `Result.num_denoise_forwards`, the count when the prefill and
  each commit ride along with the next denoising forward, as the vLLM
  runner schedules them (spec: "the one saving that changes no result";
  it is also what the plugin's tokens-per-forward metric divides by).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig, Qwen3ForCausalLM

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.convert.ar import greedy
from vllm_sdar.convert.task_base import Problem

MAX_TOKENS = 8  # addition's budget (Task.max_tokens): 4-digit sum + EOS, with room


@dataclass(frozen=True)
class Score:
    decoder: str  # "AR greedy" | "SDAR"
    block_size: int | None
    strategy: str | None
    threshold: float | None
    problems: int
    correct: int
    tokens: int
    forwards: int
    denoise_forwards: int  # AR: = forwards

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards

    @property
    def tokens_per_fused_forward(self) -> float:
        return self.tokens / self.denoise_forwards

    def row(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "accuracy": round(self.accuracy, 4),
            "tokens_per_forward": round(self.tokens_per_forward, 3),
            "tokens_per_fused_forward": round(self.tokens_per_fused_forward, 3),
        }


def prompt_ids(tokenizer: Any, problem: Problem) -> list[int]:
    text = tokenizer.apply_chat_template(
        problem.context(), tools=problem.tools, tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_ok(tokenizer: Any, problem: Problem, tokens: Sequence[int], stops: set[int]) -> bool:
    """Correct = the exact answer characters, then a stop token, nothing else."""
    if not tokens or tokens[-1] not in stops:
        return False
    return tokenizer.decode(list(tokens[:-1])) == problem.answer


def _stop_ids(model_dir: Path) -> set[int]:
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}


@torch.inference_mode()
def eval_ar(model_dir: Path, problems: Sequence[Problem], max_tokens: int = MAX_TOKENS) -> Score:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = Qwen3ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    stops = _stop_ids(model_dir)
    correct = tokens = forwards = 0
    for problem in problems:
        out, n = greedy(model, prompt_ids(tokenizer, problem), stops, max_tokens)
        correct += answer_ok(tokenizer, problem, out, stops)
        tokens += len(out)
        forwards += n
    n = len(problems)
    return Score("AR greedy", None, None, None, n, correct, tokens, forwards, forwards)


def eval_sdar(
    decoder: ReferenceDecoder,
    problems: Sequence[Problem],
    strategy: str,
    threshold: float | None,
    max_tokens: int = MAX_TOKENS,
) -> Score:
    options = SdarOptions(remasking_strategy=strategy, confidence_threshold=threshold or 0.85)
    request = RequestSettings(max_tokens=max_tokens, options=options)  # greedy by default
    tokenizer = decoder.tokenizer
    correct = tokens = forwards = denoise = 0
    for problem in problems:
        result = decoder.generate_one(prompt_ids(tokenizer, problem), request)
        correct += answer_ok(tokenizer, problem, result.token_ids, decoder.eos_ids)
        tokens += len(result.token_ids)
        forwards += result.num_forwards
        denoise += result.num_denoise_forwards
    n = len(problems)
    return Score(
        "SDAR", decoder.block_size, strategy, threshold, n, correct, tokens, forwards, denoise
    )


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| decoder | block | strategy | threshold | exact match "
        "| tokens / forward (reference) | tokens / forward (fused) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['decoder']} | {r['block_size'] or '-'} | {r['strategy'] or '-'} "
            f"| {r['threshold'] or '-'} | {100 * r['accuracy']:.1f}% "
            f"({r['correct']}/{r['problems']}) | {r['tokens_per_forward']:.2f} "
            f"| {r['tokens_per_fused_forward']:.2f} |"
        )
    return "\n".join(lines)

"""Phase "addition": TPF vs confidence threshold on the trained toy model.

    python -m benchmarks.addition --mode full --out frag.json

Random weights have no real confidence distribution, so this uses the
trained addition model (vllm_sdar/assets/sdar-addition: "123+456=" ->
"579", char-level tokenizer) on its held-out problems, decoded by the
plugin with low_confidence_dynamic at each threshold (greedy, stopping at
EOS as a user would). If the model is not there yet, the phase reports
`skipped` and the suite goes on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks import env
from benchmarks.config import DYNAMIC, STATIC, Method, suite
from benchmarks.models import ADDITION_MODEL

MAX_TOKENS = 8  # longest answer (4 digits for 3-digit operands) + EOS, with room


def available(path: Path = ADDITION_MODEL) -> bool:
    # eval.json says which problems were held out (python -m vllm_sdar.convert.toy).
    files = ("config.json", "eval.json")
    return all((path / f).exists() for f in files) and any(path.glob("*.safetensors"))


def problems(n: int, path: Path = ADDITION_MODEL) -> list[tuple[str, str]]:
    """(problem, answer) pairs: the first n of the model's held-out test split."""
    from vllm_sdar.convert.toy import held_out

    return [(p.prompt, p.answer) for p in held_out(n, path)]


def render(tokenizer: Any, problem: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": problem}], tokenize=False, add_generation_prompt=True
    )


def run(mode: str, path: Path = ADDITION_MODEL) -> dict[str, Any]:
    suite_ = suite(mode)
    if not available(path):
        return {"skipped": f"{path} does not exist yet (trained toy model not shipped)"}
    env.configure()
    from transformers import AutoTokenizer

    from benchmarks.engine import EngineSpec, sampling_params, shutdown, start, timed_generate

    tokenizer = AutoTokenizer.from_pretrained(path)
    pairs = problems(suite_.addition_problems, path)
    prompts = [render(tokenizer, p) for p, _ in pairs]
    began = time.perf_counter()
    llm = start(path, EngineSpec("sdar", None, 256, max_num_seqs=len(prompts)), "")
    block = llm.llm_engine.model_config.hf_config.block_size
    out: dict[str, Any] = {"model": str(path), "block_size": block, "problems": len(pairs)}
    out["startup_s"] = round(time.perf_counter() - began, 1)
    rows = []
    try:
        methods = [Method(block, STATIC)] + [
            Method(block, DYNAMIC, t) for t in suite_.addition_thresholds
        ]
        for method in methods:
            run_ = timed_generate(
                llm, prompts, sampling_params(MAX_TOKENS, method.sdar_options(), ignore_eos=False)
            )
            tokens, forwards = sum(run_.output_tokens), sum(run_.denoise_forwards or [0])
            correct = sum(t.strip() == a for t, (_, a) in zip(run_.texts, pairs))
            rows.append(
                {
                    "strategy": method.strategy,
                    "threshold": method.threshold,
                    "tpf": round(tokens / forwards, 4) if forwards else None,
                    "accuracy": round(correct / len(pairs), 4),
                    "output_tokens": tokens,
                    "denoise_forwards": forwards,
                    "throughput_tok_s": round(tokens / run_.wall_s, 2),
                }
            )
            env.log(f"addition {method.name}: TPF {rows[-1]['tpf']}, acc {rows[-1]['accuracy']}")
    finally:
        shutdown(llm)
    out["rows"] = rows
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["quick", "full"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=ADDITION_MODEL)
    args = parser.parse_args(argv)
    args.out.write_text(json.dumps(run(args.mode, args.model), indent=2))


if __name__ == "__main__":
    main()

"""`python -m vllm_sdar.convert --model QWEN3_DIR --data train.jsonl --out OUT`."""

from __future__ import annotations

import argparse
import sys
import time

import torch

from vllm_sdar.convert.train import (
    ConvertConfig,
    TrainingInterrupted,
    add_config_flags,
    convert,
)

HELP = {
    "model": "Qwen3ForCausalLM or Qwen3MoeForCausalLM checkpoint directory (HF format)",
    "data": "JSONL: {'messages': [...]}, {'prompt','completion'} or {'text'} per line",
    "out": "output directory: the SDAR release, plus checkpoint-*/ while training",
    "steps": "optimizer steps in total (a resumed run counts from its checkpoint)",
    "eps": "lowest noise level t of a block (t ~ U(eps, 1))",
    "weighting": "uniform (default): mean CE over masked tokens; elbo: CE weighted 1/t",
    "stop_after": "stop as if killed after this step (to try --resume)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vllm_sdar.convert",
        description="Convert a Qwen3 causal LM into an SDAR block-diffusion model.",
    )
    add_config_flags(p, ConvertConfig, HELP)
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    resume, threads = args.pop("resume"), args.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    cfg = ConvertConfig(**args)
    began = time.perf_counter()
    try:
        out = convert(cfg, resume=resume)
    except TrainingInterrupted as stop:
        print(f"{stop}; continue with --resume", file=sys.stderr)
        return 3
    print(f"wrote SDAR checkpoint (block {cfg.block_size}) to {out} "
          f"in {time.perf_counter() - began:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

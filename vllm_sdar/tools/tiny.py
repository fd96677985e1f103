"""Tiny random-weight SDAR checkpoints in HF format, for tests and demos.

    python -m vllm_sdar.tools.tiny --out models/tiny-dense --arch dense
    python -m vllm_sdar.tools.tiny --out models/tiny-moe --arch moe --block-size 8

The checkpoint carries the real SDAR tokenizer (151,670 tokens, vendored from
the SDAR-4B-Chat release) and is deterministic for a given seed. The
lm_head is initialised wider than the body so the random network has a
spread of confidences (some slots far above 0.9, most far below), which is
what makes threshold-based unmasking do something in tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from vllm_sdar.algorithm.config import DEFAULT_MASK_ID, SDARConfig, SDARMoeConfig
from vllm_sdar.convert.shapes import qwen3_shape

ASSETS = Path(__file__).parent.parent / "assets" / "sdar-4b-chat"
TOKENIZER_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "vocab.json",
)
EOS_IDS = [151645, 151643]


@dataclass(frozen=True)
class TinySpec:
    arch: str = "dense"  # dense | moe
    block_size: int = 4
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64  # the CPU attention kernel rejects 16
    intermediate_size: int = 256
    num_experts: int = 4
    experts_per_tok: int = 2
    moe_intermediate_size: int = 64
    vocab_size: int = 151936
    lm_head_std: float = 0.5


def build_config(spec: TinySpec) -> SDARConfig | SDARMoeConfig:
    common = dict(
        **qwen3_shape(spec),
        max_position_embeddings=4096,
        bos_token_id=151643,
        eos_token_id=151643,
        block_size=spec.block_size,
        mask_token_id=DEFAULT_MASK_ID,
        dtype="float32",
    )
    if spec.arch == "dense":
        config = SDARConfig(**common)
    elif spec.arch == "moe":
        config = SDARMoeConfig(
            **common,
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            mlp_only_layers=[],
        )
    else:
        raise ValueError(f"arch must be dense or moe, got {spec.arch!r}")
    config.architectures = ["SDARMoeForCausalLM" if spec.arch == "moe" else "SDARForCausalLM"]
    return config


def write_tokenizer(out: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(ASSETS / name, out / name)
    (out / "generation_config.json").write_text(
        json.dumps(
            {"bos_token_id": 151643, "eos_token_id": EOS_IDS, "pad_token_id": 151643},
            indent=2,
        )
    )


def build(out: str | Path, spec: TinySpec = TinySpec()) -> Path:
    """Write the checkpoint to `out` (created) and return its path."""
    from vllm_sdar.algorithm.hf_model import model_class_for

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = build_config(spec)
    torch.manual_seed(spec.seed)
    model = model_class_for(config)(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.lm_head_std)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--arch", choices=["dense", "moe"], default="dense")
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=TinySpec.hidden_size)
    parser.add_argument("--num-layers", type=int, default=TinySpec.num_layers)
    parser.add_argument("--lm-head-std", type=float, default=TinySpec.lm_head_std)
    args = parser.parse_args(argv)
    spec = TinySpec(
        arch=args.arch,
        block_size=args.block_size,
        seed=args.seed,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        lm_head_std=args.lm_head_std,
    )
    path = build(args.out, spec)
    print(f"wrote {spec.arch} SDAR checkpoint (block {spec.block_size}) to {path}")


if __name__ == "__main__":
    main()

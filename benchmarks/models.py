"""Benchmark checkpoints: random-weight SDAR models built once and cached.

The tiny test checkpoint (hidden 128, 2 layers) measures almost nothing but
Python overhead, so the full suite builds a larger dense model and a
scaled-down MoE. Every model carries the real SDAR tokenizer, so the
embedding and lm_head are 151,936 x hidden each: at the hidden sizes this
2-core CPU can afford, the lm_head is a large share of the compute (see
README, "What the model shapes mean").

Built checkpoints live under /work/main/.cache/bench/<name>-<digest>
(`.cache/` is gitignored), keyed by a digest of the spec so a changed spec
never reuses stale weights.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

from vllm_sdar.tools.tiny import TinySpec, build

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SDAR_BENCH_CACHE", REPO / ".cache" / "bench"))
# The trained toy model another part of the project ships (addition task).
ADDITION_MODEL = REPO / "vllm_sdar" / "assets" / "sdar-addition"


def _lm_head_std(hidden: int) -> float:
    # tiny.py widens the lm_head (std 0.5 at hidden 128) so a random network
    # has a spread of confidences. Logit std grows like std * sqrt(hidden)
    # (the final RMSNorm makes |h| ~ sqrt(hidden)), so keep that product fixed
    # and the confidence spread stays comparable across shapes.
    return 0.5 * math.sqrt(128 / hidden)


@dataclass(frozen=True)
class BenchModel:
    """A named checkpoint shape and the AR architecture of the same weights."""

    name: str
    spec: TinySpec
    ar_architecture: str

    def body_params(self) -> int:
        """Parameters outside the embedding and lm_head (rough, for the record)."""
        s = self.spec
        attn = s.hidden_size * s.head_dim * (2 * s.num_heads + 2 * s.num_kv_heads)
        if s.arch == "moe":
            mlp = s.num_experts * 3 * s.hidden_size * s.moe_intermediate_size
        else:
            mlp = 3 * s.hidden_size * s.intermediate_size
        return s.num_layers * (attn + mlp)

    def describe(self) -> dict[str, object]:
        s = self.spec
        return {
            "name": self.name,
            "arch": s.arch,
            "hidden_size": s.hidden_size,
            "num_layers": s.num_layers,
            "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "intermediate_size": s.intermediate_size if s.arch == "dense" else None,
            "num_experts": s.num_experts if s.arch == "moe" else None,
            "experts_per_tok": s.experts_per_tok if s.arch == "moe" else None,
            "moe_intermediate_size": s.moe_intermediate_size if s.arch == "moe" else None,
            "vocab_size": s.vocab_size,
            "lm_head_std": round(s.lm_head_std, 4),
            "body_params_m": round(self.body_params() / 1e6, 2),
            "embedding_plus_lm_head_params_m": round(2 * s.vocab_size * s.hidden_size / 1e6, 2),
            "checkpoint_block_size": s.block_size,
        }


def _dense(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> TinySpec:
    return TinySpec(
        arch="dense",
        block_size=4,
        seed=11,
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=64,  # the CPU attention kernel rejects 16; 64 works
        intermediate_size=intermediate,
        lm_head_std=_lm_head_std(hidden),
    )


# Full mode: ~21M body parameters. Hidden 256 keeps the 151,936-row lm_head
# (39M MACs per logit row) affordable on 2 cores; 12 layers put most of the
# per-token work in the body.
DENSE = BenchModel("dense-h256-l12", _dense(256, 12, 2048, 4, 2), "Qwen3ForCausalLM")
# Scaled-down Qwen3-MoE shape (128 experts / 8 active -> 16 / 4).
MOE = BenchModel(
    "moe-h256-l6-e16",
    replace(
        _dense(256, 6, 2048, 4, 2),
        arch="moe",
        seed=12,
        num_experts=16,
        experts_per_tok=4,
        moe_intermediate_size=512,
    ),
    "Qwen3MoeForCausalLM",
)
# Quick mode (CI smoke): the test suite's tiny shapes; measures overhead only.
TINY_DENSE = BenchModel(
    "tiny-dense", TinySpec(arch="dense", block_size=4, seed=3), "Qwen3ForCausalLM"
)
TINY_MOE = BenchModel("tiny-moe", TinySpec(arch="moe", block_size=4, seed=4), "Qwen3MoeForCausalLM")


def checkpoint(model: BenchModel, cache: Path = CACHE) -> Path:
    """The model's checkpoint directory, built on first use."""
    digest = hashlib.sha1(repr(model.spec).encode()).hexdigest()[:10]
    path = cache / f"{model.name}-{digest}"
    if not (path / "model.safetensors").exists():
        build(path, model.spec)
    return path

"""The `benchmarks.shapes` models: random weights with the releases' proportions.

The real 151,936-token vocabulary; a Qwen3-0.6B-shaped dense model and a
Qwen3-30B-A3B-shaped MoE scaled to fit a 2-core machine (64 experts, 4
active: the release's 1/16 active share); the test suite's tiny shape for
the smoke run.
"""

from __future__ import annotations

from benchmarks.harness.models import BenchModel, lm_head_std
from benchmarks.roofline import Shape
from vllm_sdar.tools.tiny import TinySpec


def _release_like(**fields: object) -> TinySpec:
    """Width 1024, 16 query heads x 128, B = 4: what both shapes share."""
    return TinySpec(
        block_size=4,
        hidden_size=1024,
        num_heads=16,
        head_dim=128,
        lm_head_std=lm_head_std(1024),
        **fields,  # type: ignore[arg-type]
    )


# Qwen3-0.6B's body (untied lm_head as in the SDAR releases): 0.75B parameters.
QWEN3_06B = BenchModel(
    "qwen3-0.6b-shape",
    _release_like(arch="dense", seed=21, num_layers=28, num_kv_heads=8, intermediate_size=3072),
    "Qwen3ForCausalLM",
)
# Qwen3-30B-A3B: hidden 2048, 48 layers, 32/4 heads, 128 experts (8 active),
# expert width 768. Halved width, a quarter of the depth, half the experts
# with the same active share and the same hidden/expert-width ratio.
QWEN3_30B_A3B_SCALED = BenchModel(
    "qwen3-30b-a3b-shape-scaled",
    _release_like(
        arch="moe",
        seed=22,
        num_layers=12,
        num_kv_heads=2,
        num_experts=64,
        experts_per_tok=4,
        moe_intermediate_size=384,
    ),
    "Qwen3MoeForCausalLM",
)
# Quick mode (CI smoke): the test suite's tiny shapes; measures overhead only.
TINY_DENSE = BenchModel(
    "tiny-dense", TinySpec(arch="dense", block_size=4, seed=3), "Qwen3ForCausalLM"
)
MODELS = {m.name: m for m in (QWEN3_06B, QWEN3_30B_A3B_SCALED, TINY_DENSE)}


def shape_of(model: BenchModel) -> Shape:
    """The dimensions the roofline cost model needs."""
    s = model.spec
    moe = s.arch == "moe"
    return Shape(
        hidden=s.hidden_size,
        layers=s.num_layers,
        heads=s.num_heads,
        kv_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        vocab=s.vocab_size,
        intermediate=0 if moe else s.intermediate_size,
        experts=s.num_experts if moe else 0,
        experts_per_tok=s.experts_per_tok if moe else 0,
        moe_intermediate=s.moe_intermediate_size if moe else 0,
    )

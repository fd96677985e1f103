"""Random-weight benchmark checkpoints, built once and cached.

Every model carries the real SDAR tokenizer, so the embedding and lm_head
are 151,936 x hidden each. Built checkpoints live under
/work/main/.cache/bench/<name>-<digest> (`.cache/` is gitignored), keyed by
a digest of the spec so a changed spec never reuses stale weights.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from vllm_sdar.tools.tiny import TinySpec, build

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("SDAR_BENCH_CACHE", REPO / ".cache" / "bench"))


def lm_head_std(hidden: int) -> float:
    """An lm_head init whose logits spread confidences like tiny.py's at hidden 128.

    tiny.py widens the lm_head (std 0.5 at hidden 128) so a random network
    has a spread of confidences. Logit std grows like std * sqrt(hidden)
    (the final RMSNorm makes |h| ~ sqrt(hidden)), so keep that product fixed.
    """
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
        moe = s.arch == "moe"
        return {
            "name": self.name,
            "arch": s.arch,
            "hidden_size": s.hidden_size,
            "num_layers": s.num_layers,
            "num_heads": s.num_heads,
            "num_kv_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "intermediate_size": None if moe else s.intermediate_size,
            "num_experts": s.num_experts if moe else None,
            "experts_per_tok": s.experts_per_tok if moe else None,
            "moe_intermediate_size": s.moe_intermediate_size if moe else None,
            "vocab_size": s.vocab_size,
            "lm_head_std": round(s.lm_head_std, 4),
            "body_params_m": round(self.body_params() / 1e6, 2),
            "embedding_plus_lm_head_params_m": round(2 * s.vocab_size * s.hidden_size / 1e6, 2),
            "checkpoint_block_size": s.block_size,
        }


def checkpoint(model: BenchModel, cache: Path = CACHE) -> Path:
    """The model's checkpoint directory, built on first use."""
    digest = hashlib.sha1(repr(model.spec).encode()).hexdigest()[:10]
    path = cache / f"{model.name}-{digest}"
    if not (path / "model.safetensors").exists():
        build(path, model.spec)
    return path


ASSETS = REPO / "vllm_sdar" / "assets"


def model_dir(name: str) -> Path:
    """A shipped asset (`sdar-addition`, ...) or a `benchmarks.shapes_models` model, built."""
    if (ASSETS / name).is_dir():
        return ASSETS / name
    from benchmarks.shapes_models import MODELS  # imports this module: not at the top

    return checkpoint(MODELS[name])


def problem_prompts(model: Path, n: int) -> list[list[int]]:
    """Held-out problems (chat template) for a trained toy, random ids otherwise."""
    if (model / "eval.json").exists():
        from transformers import AutoTokenizer

        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.toy import held_out

        tok = AutoTokenizer.from_pretrained(model)
        return [prompt_ids(tok, p) for p in held_out(n, model)]
    from benchmarks.harness.engines import prompts

    return prompts(n, 32)

"""The shape of a small Qwen3 built like the SDAR releases, and the toy's AR model spec.

`qwen3_shape` is shared by the random tiny checkpoints (vllm_sdar.tools.tiny)
and the toy's AR parent (ar.py). It lives here, with no imports of its own
from the package, so both import it downward: ar.py no longer imports the
tools and tiny.py no longer needs ar.py for the `ArSpec` type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


class Qwen3Shape(Protocol):
    """What `qwen3_shape` reads (TinySpec and ArSpec both have it)."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def hidden_size(self) -> int: ...
    @property
    def intermediate_size(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def num_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...


def qwen3_shape(spec: Qwen3Shape) -> dict[str, Any]:
    """Qwen3 config kwargs for a small model built like the SDAR releases:
    RoPE base 1e6, RMSNorm eps 1e-6, untied lm_head (SDAR's is untied).
    Shared by the random tiny checkpoints and the toy's AR model."""
    return dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        rope_theta=1_000_000,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class ArSpec:
    """The toy's autoregressive Qwen3 (ar.py), from scratch."""

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 2
    num_kv_heads: int = 1
    head_dim: int = 64  # vLLM's CPU attention kernel rejects smaller heads
    intermediate_size: int = 512
    max_position_embeddings: int = 256

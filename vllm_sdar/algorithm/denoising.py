"""How a block is denoised, and where blocks lie.

Owns the per-request knobs the rest of the algorithm reads: the sampling
parameters of a slot's proposal (`Sampling`), the block's denoising
parameters (`Denoising`) with the names and integer codes of the four
unmasking strategies (`STRATEGIES`, `STRATEGY_CODES`), the quota schedule
(how many slots each step unmasks), the constants every block of one
request is denoised with (`BlockDecoding`), and the block layout (blocks
aligned to absolute position 0: `first_block`, and the block-causal
attention mask). Pure torch, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vllm_sdar.algorithm.output_rules import OutputRules

STRATEGIES = (
    "low_confidence_static",
    "low_confidence_dynamic",
    "sequential",
    "entropy_bounded",
)

STRATEGY_CODES = {name: code for code, name in enumerate(STRATEGIES)}
STATIC, DYNAMIC, SEQUENTIAL, ENTROPY = range(4)


@dataclass(frozen=True)
class Sampling:
    """How one masked slot proposes its token (x0) and confidence."""

    temperature: float = 0.0  # 0 = greedy (argmax), as vLLM defines it
    top_k: int = 0  # <= 0: off
    top_p: float = 1.0  # >= 1: off

    @classmethod
    def from_params(cls, params: Any) -> Sampling:
        """From a vLLM SamplingParams (read by attribute: no vLLM import)."""
        top_k = params.top_k if params.top_k and params.top_k > 0 else 0
        return cls(temperature=params.temperature, top_k=top_k, top_p=params.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Denoising:
    """How one block is denoised: schedule and unmasking rule."""

    block_size: int = 4
    steps: int = 4
    strategy: str = "low_confidence_dynamic"
    threshold: float = 0.85
    eb_threshold: float = 0.35


@dataclass(frozen=True)
class BlockDecoding:
    """The constants every block of one request is denoised with, resolved
    once per request (`RequestSettings.block_decoding`) and shipped with
    each step's plan as one object."""

    denoising: Denoising
    sampling: Sampling
    seed: int  # of the seeded noise; drawn once when the request set none
    output_rules: OutputRules
    num_logprobs: int | None = None  # vLLM's `logprobs` (None: not asked)
    # What ends the request (vLLM's check_stop): a stop id, or max_tokens.
    finish_ids: frozenset[int] = frozenset()
    max_tokens: int | None = None


def quota_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens to unmask at each step: B // S each, the first B % S get one more."""
    if not 1 <= steps <= block_size:
        raise ValueError(f"denoising steps must be in [1, {block_size}], got {steps}")
    base, extra = divmod(block_size, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def first_block(prompt_len: int, block_size: int) -> tuple[int, int]:
    """(start of the first generated block, prompt tokens inside it).

    Blocks are aligned to absolute position 0, so the prompt's tail
    (prompt_len mod B tokens) shares the first generated block with MASKs.
    """
    start = (prompt_len // block_size) * block_size
    return start, prompt_len - start


def block_causal_mask(
    q_start: int, q_len: int, k_len: int, block_size: int, device=None
) -> torch.Tensor:
    """Bool [q_len, k_len]: True where query may attend key.

    A query in block j sees every key in blocks 0..j (both directions inside
    its own block); keys are positions 0..k_len-1.
    """
    q_blk = torch.arange(q_start, q_start + q_len, device=device) // block_size
    k_blk = torch.arange(k_len, device=device) // block_size
    return k_blk[None, :] <= q_blk[:, None]

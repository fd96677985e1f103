"""The machine's limits and what one forward must move and compute.

Two halves:

- `measure_machine()`: memory read bandwidth (a reduction over a buffer far
  larger than the caches) and matmul throughput (square GEMMs) per dtype,
  with the thread count the engines use, best of a few repetitions;
- `forward_cost()`: bytes read and FLOPs of one forward of a Qwen3-shaped
  model (dense or MoE) given the query tokens, logit rows and context
  length of a step, so a measured step time can be put next to its limit
  `max(bytes / bandwidth, flops / peak)`.

Weights are read once per forward whatever the batch (that is why a forward
over B tokens costs about the same as over one while memory-bound). The
embedding is gathered (N rows, not the table); the lm_head is read whole.
For MoE, the expert weights read are those of the experts the step's tokens
route to; with random weights routing is close to uniform, so the expected
number of distinct experts per layer is E * (1 - (1 - k/E)^T) for T tokens
(`expected_experts`). KV reads are the context each query attends to.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class Shape:
    """The Qwen3 dimensions that set a forward's bytes and FLOPs."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int = 0  # dense MLP
    experts: int = 0  # MoE (0 = dense)
    experts_per_tok: int = 0
    moe_intermediate: int = 0

    @property
    def attn_params(self) -> int:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return q_o + k_v

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * (self.moe_intermediate if self.experts else self.intermediate)

    def total_params(self) -> int:
        mlp = self.expert_params * (self.experts or 1)
        return self.layers * (self.attn_params + mlp) + 2 * self.vocab * self.hidden

    def active_params_per_token(self) -> int:
        mlp = self.expert_params * (self.experts_per_tok or 1)
        return self.layers * (self.attn_params + mlp) + self.vocab * self.hidden


def expected_experts(experts: int, per_tok: int, tokens: int) -> float:
    """Distinct experts one layer touches for `tokens` uniformly routed tokens."""
    if not experts:
        return 1.0
    return experts * (1.0 - (1.0 - per_tok / experts) ** tokens)


def forward_cost(
    shape: Shape,
    tokens: int,
    logit_rows: int,
    requests: int,
    context: float,
    dtype: str,
    experts_per_layer: float | None = None,
) -> dict[str, float]:
    """Bytes read and FLOPs of one forward.

    tokens: query positions in the forward (all requests); logit_rows:
    lm_head rows computed; context: mean keys per request. A request's
    queries share one read of its KV (the block of B queries attends to the
    same keys), so KV bytes scale with requests, not with tokens.
    experts_per_layer: distinct experts a MoE layer reads, where measured;
    otherwise the uniform-routing expectation.
    """
    size = DTYPE_BYTES[dtype]
    experts = experts_per_layer or expected_experts(shape.experts, shape.experts_per_tok, tokens)
    body_weights = shape.layers * (shape.attn_params + shape.expert_params * experts)
    lm_head = shape.vocab * shape.hidden
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim
    weight_bytes = size * (body_weights + lm_head + tokens * shape.hidden)
    kv_bytes = size * kv_per_token * context * requests
    # Activations are small next to weights and KV at these batch sizes.
    per_tok_mlp = shape.expert_params * (shape.experts_per_tok or 1)
    body_flops = 2 * tokens * shape.layers * (shape.attn_params + per_tok_mlp)
    attn_flops = 4 * tokens * shape.layers * shape.heads * shape.head_dim * context
    head_flops = 2 * logit_rows * lm_head
    return {
        "bytes": weight_bytes + kv_bytes,
        "weight_bytes": weight_bytes,
        "kv_bytes": kv_bytes,
        "flops": body_flops + attn_flops + head_flops,
        "experts_per_layer": experts,
    }


def limit_s(cost: dict[str, float], machine: dict[str, Any], dtype: str) -> dict[str, float]:
    """The roofline time of a forward: max of its memory time and compute time."""
    memory = cost["bytes"] / (machine["bandwidth_gb_s"] * 1e9)
    compute = cost["flops"] / (machine["matmul_gflops"][dtype] * 1e9)
    return {
        "memory_s": memory,
        "compute_s": compute,
        "limit_s": max(memory, compute),
        "bound": "memory" if memory >= compute else "compute",
    }


def _best(fn: Any, reps: int) -> float:
    fn()  # warm-up: page faults, kernel selection
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(gib: float = 1.0, reps: int = 5) -> float:
    """Read bandwidth in GB/s over buffers far beyond the caches.

    The best of a reduction and a matrix-vector product over `gib` GiB: a
    GEMV streams its matrix with the prefetching a decode step's weight
    reads get (measured here: ~16.6 GB/s vs ~12 for the plain sum), so the
    sum alone would understate what a forward can reach.
    """
    n = int(gib * (1 << 30)) // 4
    buf = torch.ones(n, dtype=torch.float32)
    summed = buf.numel() * 4 / _best(buf.sum, reps)
    side = int(n**0.5)
    matrix, vector = torch.randn(side, side), torch.randn(side)
    gemv = matrix.numel() * 4 / _best(lambda: torch.mv(matrix, vector), reps)
    return max(summed, gemv) / 1e9


def measure_matmul(dtype: str, size: int = 2048, reps: int = 3) -> float:
    """GEMM throughput in GFLOP/s for square size x size matrices."""
    torch_dtype = getattr(torch, dtype)
    a = torch.randn(size, size).to(torch_dtype)
    b = torch.randn(size, size).to(torch_dtype)
    seconds = _best(lambda: torch.mm(a, b), reps)
    return 2 * size**3 / seconds / 1e9


def measure_machine(dtypes: tuple[str, ...] = ("float32", "bfloat16")) -> dict[str, Any]:
    return {
        "threads": torch.get_num_threads(),
        "bandwidth_gb_s": round(measure_bandwidth(), 2),
        "matmul_gflops": {d: round(measure_matmul(d), 1) for d in dtypes},
        "bf16_native": bool(torch.backends.mkldnn.is_available())
        and torch.cpu._is_avx512_bf16_supported(),
    }


class MachineProbe:
    """Harness worker factory: the machine's limits, measured in a process of
    their own with the engines' thread count and LD_PRELOAD."""

    def __init__(self, threads: int, dtypes: list[str]) -> None:
        torch.set_num_threads(threads)
        self.dtypes = tuple(dtypes)

    def measure(self) -> dict[str, Any]:
        return measure_machine(self.dtypes)

"""What each suite mode measures: models, methods, grid cells, serving rates.

Cells are (batch size, output length); each cell lists the SDAR block sizes
measured there, so expensive combinations can be cut per cell (a cut is
recorded in the results JSON and README, never silent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.models import DENSE, MOE, TINY_DENSE, TINY_MOE, BenchModel

STATIC = "low_confidence_static"
DYNAMIC = "low_confidence_dynamic"


@dataclass(frozen=True)
class Method:
    """One SDAR decoding setting (measured in the plugin and the reference)."""

    block_size: int
    strategy: str
    threshold: float | None = None

    @property
    def name(self) -> str:
        tail = "static" if self.strategy == STATIC else f"dyn{self.threshold:g}"
        return f"b{self.block_size}-{tail}"

    def sdar_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"remasking_strategy": self.strategy}
        if self.threshold is not None:
            options["confidence_threshold"] = self.threshold
        return options


def methods_for(
    block_sizes: tuple[int, ...],
    strategies: tuple[str, ...] = (STATIC, DYNAMIC),
    threshold: float = 0.9,
) -> list[Method]:
    out = []
    for b in block_sizes:
        for strategy in strategies:
            out.append(Method(b, strategy, threshold if strategy == DYNAMIC else None))
    return out


@dataclass(frozen=True)
class Cell:
    batch: int
    output_len: int
    block_sizes: tuple[int, ...]  # SDAR block sizes measured in this cell
    strategies: tuple[str, ...] = (STATIC, DYNAMIC)

    def methods(self, block_size: int) -> list[Method]:
        return methods_for((block_size,), self.strategies) if block_size in self.block_sizes else []


@dataclass(frozen=True)
class ModelPlan:
    model: BenchModel
    cells: tuple[Cell, ...]
    # Overhead breakdown (SDAR B=4, dynamic 0.9; AR alongside for context).
    overhead_batches: tuple[int, ...] = ()
    overhead_output_len: int = 32
    # TPF vs threshold on this (random-weight) model, SDAR B=4, dynamic.
    synthetic_thresholds: tuple[float, ...] = ()
    # The reference decoder is sequential: it runs this many requests per
    # (method, output length) and per-request time is extrapolated to the
    # batch size beyond that (recorded per cell as "extrapolated").
    reference_requests: int = 2
    reference_requests_long: int = 1  # for output lengths > 128
    cuts: tuple[str, ...] = ()

    @property
    def block_sizes(self) -> tuple[int, ...]:
        return tuple(sorted({b for c in self.cells for b in c.block_sizes}))


@dataclass(frozen=True)
class ServingPlan:
    model: BenchModel
    block_size: int
    method: Method
    rates: tuple[float, ...]
    num_prompts: int
    input_len: int
    output_len: int


@dataclass(frozen=True)
class Suite:
    mode: str
    prompt_len: int
    models: tuple[ModelPlan, ...]
    serving: ServingPlan | None
    addition_thresholds: tuple[float, ...]
    addition_problems: int
    warmup_tokens: int = 8
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        def plan(p: ModelPlan) -> dict[str, Any]:
            d = asdict(p)
            d["model"] = p.model.name
            return d

        out = asdict(self)
        out["models"] = [plan(p) for p in self.models]
        if self.serving is not None:
            out["serving"]["model"] = self.serving.model.name
            out["serving"]["method"] = self.serving.method.name
            # JSON has no infinity: "inf" as vLLM's --request-rate spells it.
            out["serving"]["rates"] = [
                r if r != float("inf") else "inf" for r in self.serving.rates
            ]
        return out


THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def quick() -> Suite:
    # CI smoke: tiny shapes (overhead only), batch 1 and 8, 32 tokens; B=16
    # at batch 1 only (it exercises the per-deployment block-size path).
    cells = (Cell(1, 32, (4, 16)), Cell(8, 32, (4,)))
    return Suite(
        mode="quick",
        prompt_len=32,
        models=(
            ModelPlan(
                TINY_DENSE,
                cells,
                overhead_batches=(1, 8),
                overhead_output_len=16,
                synthetic_thresholds=(0.3, 0.9),
                reference_requests=2,  # batch 8 exercises the extrapolation path
            ),
        ),
        serving=ServingPlan(TINY_DENSE, 4, Method(4, DYNAMIC, 0.9), (float("inf"),), 8, 32, 32),
        addition_thresholds=(0.5, 0.9),
        addition_problems=16,
        notes=("quick mode: tiny random-weight model, timings show engine overhead only",),
    )


def full() -> Suite:
    # Cuts come from a calibration run on this 2-core CPU (README, "What was
    # cut"): a B=16 step costs ~3-4x a B=4 step (16 logit rows per request
    # through a 151,936-row lm_head, 16-slot unmasking), B=4 at batch 128
    # costs ~2 s per step, and the 512-token rows are 4x the 128 ones.
    dense_cells = (
        Cell(1, 128, (4, 16)),
        Cell(8, 128, (4, 16)),
        Cell(32, 128, (4,)),
        Cell(128, 128, (4,), strategies=(DYNAMIC,)),
        Cell(1, 512, (4, 16)),
    )
    moe_cells = (Cell(1, 128, (4,)), Cell(8, 128, (4,)))
    return Suite(
        mode="full",
        prompt_len=32,
        models=(
            ModelPlan(
                DENSE,
                dense_cells,
                overhead_batches=(1, 128),
                overhead_output_len=32,
                synthetic_thresholds=THRESHOLDS,
                reference_requests=2,
                reference_requests_long=1,
                cuts=(
                    "output 512: batch 1 only (batch 8, 32, 128 not run)",
                    "B=16: batch 1 and 8 only",
                    "batch 128: B=4 low_confidence_dynamic only (no static, no B=16)",
                    "reference: 2 requests per method at output 128, 1 at output 512; "
                    "larger batches extrapolated from the per-request time",
                ),
            ),
            ModelPlan(
                MOE,
                moe_cells,
                reference_requests=1,
                cuts=("MoE: output 128, batch 1 and 8, B=4 only; reference: 1 request",),
            ),
        ),
        # This CPU serves ~0.8 req/s of 64 tokens (SDAR B=4): rates straddle it.
        serving=ServingPlan(
            DENSE, 4, Method(4, DYNAMIC, 0.9), (0.25, 0.5, float("inf")), 16, 32, 64
        ),
        addition_thresholds=THRESHOLDS,
        addition_problems=200,
    )


def suite(mode: str) -> Suite:
    return {"quick": quick, "full": full}[mode]()


MODELS = {m.name: m for m in (DENSE, MOE, TINY_DENSE, TINY_MOE)}

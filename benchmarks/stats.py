"""Small numeric helpers: percentiles, cell summaries, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_summary(completion_s: Sequence[float]) -> dict[str, float]:
    return {
        "latency_mean_s": round(sum(completion_s) / len(completion_s), 4),
        "latency_p50_s": round(percentile(completion_s, 50), 4),
        "latency_p90_s": round(percentile(completion_s, 90), 4),
    }


def cell_record(
    wall_s: float,
    completion_s: Sequence[float],
    output_tokens: int,
    **extra: Any,
) -> dict[str, Any]:
    """One (model, method, batch, output_len) measurement."""
    return {
        "wall_s": round(wall_s, 4),
        "output_tokens": int(output_tokens),
        "throughput_tok_s": round(output_tokens / wall_s, 3) if wall_s > 0 else float("nan"),
        **latency_summary(completion_s),
        **extra,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 4)

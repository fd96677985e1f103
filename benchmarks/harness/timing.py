"""Timing across compared variants: interleaved rounds, medians, ratios.

Every comparison in the studies runs its variants in turn, round by round
(ABAB...), so a change in machine load hits all of them alike; what is
reported is the median (and spread) over rounds, never a single run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

K = TypeVar("K")
R = TypeVar("R")


def interleave(
    variants: Mapping[K, Callable[[], R]],
    rounds: int,
    warmup: bool = False,
    on_round: Callable[[int], None] | None = None,
) -> dict[K, list[R]]:
    """Call every variant once per round, in turn; each one's results in order.

    warmup: one untimed call of each first (lazy inits, page faults).
    on_round: called with the 0-based round number after each round.
    """
    if warmup:
        for fn in variants.values():
            fn()
    out: dict[K, list[R]] = {key: [] for key in variants}
    for r in range(rounds):
        for key, fn in variants.items():
            out[key].append(fn())
        if on_round is not None:
            on_round(r)
    return out


def timed_ms(fn: Callable[[], Any]) -> Callable[[], float]:
    """`fn` as a variant whose result is its wall time in milliseconds."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1000

    return run


def summary(ms: Sequence[float]) -> dict[str, float]:
    """Median and p10/p90 of per-round times (ms)."""
    # "inclusive": within the observed range; the default ("exclusive")
    # extrapolates past it on a few rounds, even below zero.
    q = statistics.quantiles(ms, n=10, method="inclusive") if len(ms) > 1 else [ms[0]] * 9
    return {"median_ms": statistics.median(ms), "p10_ms": q[0], "p90_ms": q[-1], "n": len(ms)}


def median_run(runs: Sequence[R], key: Callable[[R], float]) -> R:
    """The run with the median `key` (the upper one of an even count): a run
    another process slowed is dropped rather than averaged in."""
    return sorted(runs, key=key)[len(runs) // 2]


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


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b rounded, or None where either is missing (or b is 0)."""
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 4)

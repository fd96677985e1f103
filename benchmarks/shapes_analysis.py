"""From `benchmarks.shapes` step samples to its rows: SDAR/AR step ratios,
break-even TPF and each step's roofline limit; the LD_PRELOAD gain."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.roofline import forward_cost, limit_s
from benchmarks.shapes_models import MODELS, shape_of
from benchmarks.shapes_worker import PROMPT_LEN


def _mean_or_none(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 2) if values else None


def summarize(batch: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Median step (and execute_model) time of each step kind at one batch."""
    record: dict[str, Any] = {"batch": batch, "steps": {}}
    kinds: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        kinds.setdefault(s["kind"], []).append(s)
    for kind, rows in kinds.items():
        record["steps"][kind] = {
            "n": len(rows),
            "median_step_ms": round(1e3 * statistics.median(r["step_s"] for r in rows), 3),
            "median_execute_ms": round(1e3 * statistics.median(r["execute_s"] for r in rows), 3),
            "tokens": rows[0]["tokens"],
            "logit_rows": round(statistics.mean(r["logit_rows"] for r in rows), 2),
            "experts_per_layer": _mean_or_none(r["experts_per_layer"] for r in rows),
        }
    return record


def _roofline(
    job: dict[str, Any], n: int, steps: dict[str, dict], measured: dict[str, float], machine: dict
) -> dict[str, Any]:
    """Bytes, FLOPs and limit of each step kind, and the share of it reached."""
    shape, b, dtype = shape_of(MODELS[job["model"]]), job["block_size"], job["dtype"]
    # Mean keys per request over the measured steps (prompt + about half the
    # generated blocks); AR over its 6 tokens.
    sdar_ctx = PROMPT_LEN + b * (job["blocks"] + 1) / 2
    ar_ctx = PROMPT_LEN + 3
    # (query tokens, lm_head rows, context) of each step kind.
    work = {
        "ar": (n, n, ar_ctx),
        "all_masked": (2 * b * n, b * n, sdar_ctx),
        "after_first": (b * n, b * n // 2, sdar_ctx),
    }
    costs = {
        name: forward_cost(shape, tokens, rows, n, ctx, dtype, steps[name].get("experts_per_layer"))
        for name, (tokens, rows, ctx) in work.items()
    }
    roof = {}
    for name, cost in costs.items():
        lim = limit_s(cost, machine, dtype)
        roof[name] = {
            "experts_per_layer": round(cost["experts_per_layer"], 2),
            "bytes_gb": round(cost["bytes"] / 1e9, 3),
            "gflop": round(cost["flops"] / 1e9, 2),
            "limit_ms": round(1e3 * lim["limit_s"], 2),
            "bound": lim["bound"],
            "fraction_of_limit": round(1e3 * lim["limit_s"] / measured[name], 3),
        }
    return roof


def analyse(fragments: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dtype, preload, batch, B): SDAR/AR step ratios and roofline."""
    ar: dict[tuple, dict[str, Any]] = {}
    for f in fragments:
        job = f["job"]
        if job["kind"] == "ar":
            for r in f["results"]:
                ar[(job["group"], job["preload"], r["batch"])] = r["steps"].get("decode")
    # The LD_PRELOAD comparison's rows stay out of the main table.
    compare_groups = {f["job"]["group"] for f in fragments if not f["job"]["preload"]}
    rows = []
    for f in fragments:
        job = f["job"]
        if job["kind"] != "sdar":
            continue
        for r in f["results"]:
            base, steps = ar.get((job["group"], job["preload"], r["batch"])), r["steps"]
            first, later = steps.get("all_masked"), steps.get("after_first")
            if not (base and first and later):
                continue
            n = r["batch"]
            measured = {
                "ar": base["median_step_ms"],
                "all_masked": first["median_step_ms"],
                "after_first": later["median_step_ms"],
            }
            mean_sdar = (measured["all_masked"] + measured["after_first"]) / 2
            kinds = {"ar": base, "all_masked": first, "after_first": later}
            rows.append(
                {
                    "model": job["model"],
                    "dtype": job["dtype"],
                    "group": job["group"],
                    "preload": job["preload"],
                    "preload_compare": job["group"] in compare_groups,
                    "block_size": job["block_size"],
                    "batch": n,
                    "ar_step_ms": measured["ar"],
                    "sdar_all_masked_ms": measured["all_masked"],
                    "sdar_after_first_ms": measured["after_first"],
                    "ratio_all_masked": round(measured["all_masked"] / measured["ar"], 3),
                    "ratio_after_first": round(measured["after_first"] / measured["ar"], 3),
                    "break_even_tpf": round(mean_sdar / measured["ar"], 3),
                    "ar_tok_s": round(1e3 * n / measured["ar"], 2),
                    "sdar_tok_s_per_tpf": round(1e3 * n / mean_sdar, 2),
                    "roofline": _roofline(job, n, kinds, measured, machine),
                }
            )
    return rows


def preload_gain(fragments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step time without / with LD_PRELOAD for the jobs run both ways."""
    by_key: dict[tuple, dict[bool, dict[str, Any]]] = {}
    for f in fragments:
        job = f["job"]
        for r in f["results"]:
            for kind, s in r["steps"].items():
                key = (job["group"], job["model"], job["dtype"], job["kind"], job["block_size"],
                       r["batch"], kind)  # fmt: skip
                by_key.setdefault(key, {})[job["preload"]] = s
    out = []
    for (_, model, dtype, kind, b, batch, step_kind), pair in sorted(
        by_key.items(), key=lambda kv: str(kv[0])
    ):
        if True in pair and False in pair:
            without, with_ = pair[False]["median_step_ms"], pair[True]["median_step_ms"]
            out.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "engine": "ar" if kind == "ar" else f"sdar-b{b}",
                    "batch": batch,
                    "step": step_kind,
                    "without_ms": without,
                    "with_ms": with_,
                    "speedup": round(without / with_, 3),
                }
            )
    return out

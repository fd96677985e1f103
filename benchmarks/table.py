"""Markdown tables from a results JSON (the README's results section).

python -m benchmarks.table benchmarks/results/<date>-<machine>.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.{digits}f}"
    return str(value)


def _md(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def offline_table(results: dict[str, Any]) -> str:
    header = [
        "model", "batch", "out", "method", "SDAR tok/s", "AR tok/s", "ref tok/s",
        "SDAR/AR", "SDAR/ref", "TPF", "ref TPF", "lat mean s", "lat p90 s",
    ]  # fmt: skip
    rows = []
    for r in results.get("ratios", []):
        rows.append(
            [
                r["model"],
                r["batch"],
                r["output_len"],
                r["method"],
                r["throughput_tok_s"],
                r["ar_throughput_tok_s"],
                r["reference_throughput_tok_s"],
                r["vs_ar"],
                r["vs_reference"],
                r["tpf"],
                r["reference_tpf"],
                r["latency_mean_s"],
                r["latency_p90_s"],
            ]  # fmt: skip
        )
    return _md(header, rows)


def overhead_table(results: dict[str, Any]) -> str:
    parts = [
        "model_forward", "lm_head_logits", "input_prep", "sampling_unmasking",
        "schedule", "update_from_output", "engine_other", "frontend_output_processing",
    ]  # fmt: skip
    header = ["model", "method", "batch", "ms/step", *parts, "outside forward", "biggest"]
    rows = []
    for o in results.get("overhead", []):
        shares = [f"{100 * o['shares'][p]:.1f}%" for p in parts]
        rows.append(
            [
                o["model"],
                o["method"],
                o["batch"],
                o["mean_step_ms"],
                *shares,
                f"{100 * o['outside_forward_share']:.1f}%",
                o["biggest_non_forward_cost"],
            ]  # fmt: skip
        )
    return _md(header, rows)


def serving_table(results: dict[str, Any]) -> str:
    serving = results.get("serving") or {}
    if "rates" not in serving:
        return f"(serving skipped: {serving.get('skipped') or serving.get('error')})"
    header = [
        "rate req/s", "out tok/s", "TTFT mean ms", "TTFT p90 ms", "ITL mean ms",
        "ITL p90 ms", "TPOT mean ms", "forwards", "committed", "TPF",
    ]  # fmt: skip
    rows = [
        [
            r["request_rate"],
            r.get("output_throughput"),
            r.get("mean_ttft_ms"),
            r.get("p90_ttft_ms"),
            r.get("mean_itl_ms"),
            r.get("p90_itl_ms"),
            r.get("mean_tpot_ms"),
            int(r["sdar_denoising_forwards"]),
            int(r["sdar_committed_tokens"]),
            r["tpf"],
        ]  # fmt: skip
        for r in serving["rates"]
    ]
    return _md(header, rows)


def tpf_table(results: dict[str, Any]) -> str:
    tpf = results.get("tpf_vs_threshold", {})
    out = []
    addition = tpf.get("addition", {})
    if "rows" in addition:
        rows = [
            [r["strategy"], r["threshold"], r["tpf"], r["accuracy"], r["throughput_tok_s"]]
            for r in addition["rows"]
        ]
        out.append(
            f"Trained addition model (B={addition['block_size']}, "
            f"{addition['problems']} held-out problems):\n\n"
            + _md(["strategy", "threshold", "TPF", "accuracy", "tok/s"], rows)
        )
    else:
        out.append(f"Trained addition model: skipped ({addition.get('skipped', 'not run')})")
    synthetic = tpf.get("synthetic", [])
    if synthetic:
        rows = [[s["model"], s["block_size"], s["threshold"], s["tpf"]] for s in synthetic]
        out.append(
            "Random-weight model (no real confidence distribution):\n\n"
            + _md(["model", "B", "threshold", "TPF"], rows)
        )
    return "\n\n".join(out)


def render(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    head = (
        f"Results {results.get('date')} on {env.get('cpu')} ({env.get('cores')} cores), "
        f"mode {results.get('mode')}, {results.get('threads')} thread(s), "
        f"load average {results.get('loadavg_start')} -> {results.get('loadavg_end')}."
    )
    sections = [
        head,
        "### Offline throughput and latency (ratios > 1: SDAR faster)\n\n" + offline_table(results),
        "### Engine overhead (share of step wall time)\n\n" + overhead_table(results),
        "### Serving (`vllm-sdar bench serve`)\n\n" + serving_table(results),
        "### Tokens per forward vs threshold\n\n" + tpf_table(results),
    ]
    cuts = [c for m in results.get("suite", {}).get("models", []) for c in m.get("cuts", [])]
    if cuts:
        sections.append("Cut from the grid: " + "; ".join(cuts) + ".")
    errors = results.get("errors") or {}
    if errors:
        sections.append("Phase errors: " + "; ".join(f"{k}: {v[:200]}" for k, v in errors.items()))
    return "\n\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()

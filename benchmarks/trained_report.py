"""Tables and figure of `benchmarks.trained` results (JSON in, md + png out).

    python -m benchmarks.trained_report benchmarks/results/<stem>-trained.json   # re-render
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness.results import md_table, publish

TARGET_ACCURACY_POINTS = 2.0  # issue 12: SDAR within 2 points of its AR parent
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]


def _ratio(x: float | None) -> str | None:
    return None if x is None else f"{x:.2f}"


def _pair_table(results: dict[str, Any], pair: str) -> str:
    header = [
        "method", "batch", "problems", "exact match", "tok/s", "SDAR/AR tok/s",
        "acc. vs AR (points)", "TPF", "latency mean s", "p50 s", "p90 s",
    ]  # fmt: skip
    ratios = {(r["pair"], r["method"], r["batch"]): r for r in results["comparison"]}
    cells = [c for c in results["cells"] if c["pair"] == pair]
    rows = []
    for c in sorted(cells, key=lambda c: (c["kind"] != "ar", c["method"], c["batch"])):
        r = ratios.get((pair, c["method"], c["batch"]), {})
        rows.append(
            [c["method"], c["batch"], c["problems"], f"{100 * c['accuracy']:.1f}%",
             c["throughput_tok_s"], _ratio(r.get("vs_ar")), r.get("accuracy_points_vs_ar"),
             c["tpf"], c["latency_mean_s"], c["latency_p50_s"], c["latency_p90_s"]]
        )  # fmt: skip
    return md_table(header, rows, digits=None)


def render(results: dict[str, Any]) -> str:
    # schema 1 (the committed files): "environment"; 2: "machine"
    env_, plan = results.get("environment") or results["machine"], results["plan"]
    parts = [
        f"Trained pairs through vLLM, {results['date']} on {env_['cpu']} ({env_['cores']} cores), "
        f"mode {results['mode']}, {results['threads']} thread per engine, load average "
        f"{results['loadavg_start']} -> {results['loadavg_end']}. Batch = requests submitted "
        f"together; batch 1 times the first {plan['batch1_problems']} problems, "
        f"larger batches all {plan['problems']}. Rerun: `{results['command']}`."
    ]
    for pair, data in results["pairs"].items():
        parts.append(
            f"### {pair}: {data['task']} ({data['sdar_model']} vs {data['ar_model']}, "
            f"max_tokens {data['max_tokens']})\n\n" + _pair_table(results, pair)
        )
    if results["targets"]:
        rows = [
            [t["pair"], t["batch"], _ratio(t["tok_s_ratio"]), f">= {t['target_ratio']}",
             t["accuracy_points_vs_ar"], "yes" if t["met"] else "no"]
            for t in results["targets"]
        ]  # fmt: skip
        header = ["pair", "batch", "SDAR/AR tok/s", "target", "acc. points", "met"]
        parts.append(
            "### Issue targets (SDAR dynamic 0.9 vs the AR parent; accuracy within "
            f"{TARGET_ACCURACY_POINTS:g} points)\n\n" + md_table(header, rows, None)
        )
    if results["errors"]:
        errors = results["errors"].items()
        parts.append("Errors: " + "; ".join(f"{k}: {v[:300]}" for k, v in errors))
    return "\n\n".join(parts) + "\n"


def plot(results: dict[str, Any], path: Path) -> Path:
    """SDAR/AR tokens/s vs batch, one line per (pair, method), beside exact
    match at the largest batch, one bar per method (matplotlib, no display)."""
    import matplotlib

    matplotlib.use("Agg")  # headless: the studies run on machines without a display
    import matplotlib.pyplot as plt

    pairs, rows = list(results["pairs"]), results["comparison"]
    methods = sorted({r["method"] for r in rows})
    fig, ((left, right),) = plt.subplots(1, 2, figsize=(12, 4.5), squeeze=False)
    colors, styles = dict(zip(methods, COLORS)), dict(zip(pairs, ["-", "--", ":"]))
    for pair in pairs:
        for method in methods:
            pts = sorted((r["batch"], r["vs_ar"]) for r in rows if r["vs_ar"] is not None
                         and r["pair"] == pair and r["method"] == method)  # fmt: skip
            if pts:
                left.plot(*zip(*pts), marker="o", linestyle=styles[pair], color=colors[method],
                          label=f"{pair}: {method}")  # fmt: skip
    left.axhline(1.0, color="black", linewidth=0.8)
    batches = sorted({r["batch"] for r in rows}) or [1]
    left.set_xscale("log", base=2)
    left.set_xticks(batches, [str(b) for b in batches])
    left.set(xlabel="batch (requests submitted together)",
             ylabel="SDAR tokens/s / AR parent tokens/s",
             title="SDAR vs its AR parent through vLLM (> 1: SDAR faster)")  # fmt: skip
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    largest, labels = max(batches), ["ar", *methods]
    width = 0.8 / max(len(pairs), 1)
    for i, pair in enumerate(pairs):
        acc = {c["method"]: c["accuracy"] for c in results["cells"]
               if c["pair"] == pair and c["batch"] == largest}  # fmt: skip
        xs = [j + i * width for j in range(len(labels))]
        right.bar(xs, [100 * acc.get(m, 0) for m in labels], width, label=pair)
    ticks = [j + width * (len(pairs) - 1) / 2 for j in range(len(labels))]
    right.set_xticks(ticks, labels, rotation=20)
    right.set(ylabel=f"exact match % (batch {largest})", ylim=(0, 100),
              title="accuracy on held-out problems")  # fmt: skip
    right.legend(fontsize=8)
    right.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":  # the .md and .png of a results file, again
    path = Path(sys.argv[1])
    results = json.loads(path.read_text())
    plot(results, path.with_suffix(".png"))
    publish(results, path.parent, path.stem, render(results))

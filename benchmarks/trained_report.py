"""Tables and figure of `benchmarks.trained` results (JSON in, md + png out)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.harness.figures import panels, save
from benchmarks.harness.results import md_table
from benchmarks.trained import TARGET_ACCURACY_POINTS

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
            [
                c["method"],
                c["batch"],
                c["problems"],
                f"{100 * c['accuracy']:.1f}%",
                c["throughput_tok_s"],
                _ratio(r.get("vs_ar")),
                r.get("accuracy_points_vs_ar"),
                c["tpf"],
                c["latency_mean_s"],
                c["latency_p50_s"],
                c["latency_p90_s"],
            ]
        )
    return md_table(header, rows, digits=None)


def render(results: dict[str, Any]) -> str:
    env_ = results["environment"]
    parts = [
        f"Trained pairs through vLLM, {results['date']} on {env_['cpu']} ({env_['cores']} cores), "
        f"mode {results['mode']}, {results['threads']} thread per engine, load average "
        f"{results['loadavg_start']} -> {results['loadavg_end']}. Batch = requests submitted "
        f"together; batch 1 times the first {results['plan']['batch1_problems']} problems, "
        f"larger batches all {results['plan']['problems']}. Rerun: `{results['command']}`."
    ]
    for pair, data in results["pairs"].items():
        if "skipped" in data:
            parts.append(f"### {pair}: skipped ({data['skipped']})")
            continue
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
        parts.append(
            "### Issue targets (SDAR dynamic 0.9 vs the AR parent; accuracy within "
            f"{TARGET_ACCURACY_POINTS:g} points)\n\n"
            + md_table(
                ["pair", "batch", "SDAR/AR tok/s", "target", "acc. points", "met"], rows, None
            )
        )
    if results["errors"]:
        parts.append(
            "Errors: " + "; ".join(f"{k}: {v[:300]}" for k, v in results["errors"].items())
        )
    return "\n\n".join(parts) + "\n"


def _ratio_panel(ax: Any, results: dict[str, Any], pairs: list[str], methods: list[str]) -> None:
    """SDAR/AR tokens/s vs batch, one line per (pair, method)."""
    rows = results["comparison"]
    colors = dict(zip(methods, COLORS))
    styles = dict(zip(pairs, ["-", "--", ":"]))
    for pair in pairs:
        for method in methods:
            pts = sorted(
                (r["batch"], r["vs_ar"])
                for r in rows
                if r["pair"] == pair and r["method"] == method and r["vs_ar"] is not None
            )
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o",
                    linestyle=styles[pair],
                    color=colors[method],
                    label=f"{pair}: {method}",
                )
    ax.axhline(1.0, color="black", linewidth=0.8)
    batches = sorted({r["batch"] for r in rows}) or [1]
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch (requests submitted together)")
    ax.set_ylabel("SDAR tokens/s / AR parent tokens/s")
    ax.set_title("SDAR vs its AR parent through vLLM (> 1: SDAR faster)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _accuracy_panel(ax: Any, results: dict[str, Any], pairs: list[str], methods: list[str]) -> None:
    """Accuracy at the largest batch (all problems), one bar per method, AR first."""
    largest = max((r["batch"] for r in results["comparison"]), default=1)
    labels = ["ar", *methods]
    width = 0.8 / max(len(pairs), 1)
    for i, pair in enumerate(pairs):
        by_method = {
            c["method"]: c["accuracy"]
            for c in results["cells"]
            if c["pair"] == pair and c["batch"] == largest
        }
        xs = [j + i * width for j in range(len(labels))]
        ax.bar(xs, [100 * by_method.get(m, 0) for m in labels], width, label=pair)
    ax.set_xticks(
        [j + width * (len(pairs) - 1) / 2 for j in range(len(labels))], labels, rotation=20
    )
    ax.set_ylabel(f"exact match % (batch {largest})")
    ax.set_ylim(0, 100)
    ax.set_title("accuracy on held-out problems")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)


def plot(results: dict[str, Any], path: Path) -> Path:
    pairs = [p for p, d in results["pairs"].items() if "skipped" not in d]
    methods = sorted({r["method"] for r in results["comparison"]})
    fig, axes = panels(2, width=6, height=4.5)
    _ratio_panel(axes[0][0], results, pairs, methods)
    _accuracy_panel(axes[0][1], results, pairs, methods)
    return save(fig, path)

"""Figures from a results JSON (matplotlib, Agg backend: no display needed).

- throughput-<model>.png: output tokens/s vs batch size, one line per method,
  one panel per output length;
- tpf-threshold.png: tokens per forward (and accuracy, for the trained
  addition model) vs the low_confidence_dynamic threshold;
- overhead.png: where each engine step's time goes, per method and batch.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One colour per SDAR setting, shared by the plugin (solid) and the
# reference decoder (dotted) so each pair reads at a glance; AR in black.
LINE = {"ar": "-", "sdar": "-", "reference": ":"}
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def _color(method: str, kind: str, seen: dict[str, str]) -> str:
    if kind == "ar":
        return "black"
    setting = method.split("-", 1)[1]  # "sdar-b4-static" / "ref-b4-static" -> "b4-static"
    if setting not in seen:
        seen[setting] = PALETTE[len(seen) % len(PALETTE)]
    return seen[setting]


def throughput_plots(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    paths = []
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for cell in results.get("cells", []):
        by_model[cell["model"]].append(cell)
    for model, cells in by_model.items():
        lengths = sorted({c["output_len"] for c in cells})
        fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            series: dict[str, list[tuple[int, float]]] = defaultdict(list)
            kinds: dict[str, str] = {}
            for c in cells:
                if c["output_len"] == length:
                    series[c["method"]].append((c["batch"], c["throughput_tok_s"]))
                    kinds[c["method"]] = c["kind"]
            colors: dict[str, str] = {}
            for method in sorted(series, key=lambda m: (kinds[m] != "ar", kinds[m] != "sdar", m)):
                pts = sorted(series[method])
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    marker="o" if kinds[method] != "reference" else "x",
                    linestyle=LINE[kinds[method]],
                    color=_color(method, kinds[method], colors),
                    label=method,
                )
            batches = sorted({c["batch"] for c in cells if c["output_len"] == length})
            ax.set_xscale("log", base=2)
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.set_yscale("log")
            ax.set_xlabel("batch size (requests submitted together)")
            ax.set_ylabel("output tokens / s")
            ax.set_title(f"{model}, output {length} tokens")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{stem}-throughput-{model}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def tpf_plot(results: dict[str, Any], out_dir: Path, stem: str) -> Path:
    tpf = results.get("tpf_vs_threshold", {})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    addition = tpf.get("addition", {})
    rows = [r for r in addition.get("rows", []) if r["threshold"] is not None]
    if rows:
        ax.plot(
            [r["threshold"] for r in rows],
            [r["tpf"] for r in rows],
            "o-",
            label=f"trained addition model, B={addition['block_size']} (TPF)",
        )
        acc = ax.twinx()
        acc.plot(
            [r["threshold"] for r in rows],
            [r["accuracy"] for r in rows],
            "s--",
            color="tab:green",
            label="addition accuracy",
        )
        acc.set_ylabel("exact-match accuracy", color="tab:green")
        acc.set_ylim(0, 1.05)
    synthetic: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for s in tpf.get("synthetic", []):
        if s["tpf"] is not None:
            synthetic[f"{s['model']} B={s['block_size']}"].append((s["threshold"], s["tpf"]))
    for label, pts in synthetic.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "x:", label=f"random weights, {label}")
    if not rows:
        ax.set_title("TPF vs threshold (trained addition model not available: skipped)")
    else:
        ax.set_title("low_confidence_dynamic: tokens per forward vs threshold")
    ax.set_xlabel("confidence threshold")
    ax.set_ylabel("tokens per denoising forward")
    ax.grid(True, alpha=0.3)
    # One legend for both axes, placed where neither curve runs.
    handles, labels = ax.get_legend_handles_labels()
    if rows:
        more = acc.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, fontsize=7, loc="center left")
    fig.tight_layout()
    path = out_dir / f"{stem}-tpf-threshold.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def overhead_plot(results: dict[str, Any], out_dir: Path, stem: str) -> Path | None:
    rows = results.get("overhead", [])
    if not rows:
        return None
    parts = list(rows[0]["shares"])
    labels = [f"{r['model']}\n{r['method']}\nbatch {r['batch']}" for r in rows]
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 3, 4.8))
    bottom = [0.0] * len(rows)
    for part in parts:
        values = [r["shares"][part] for r in rows]
        ax.bar(labels, values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("share of engine step wall time")
    ax.set_title("Engine step breakdown")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path = out_dir / f"{stem}-overhead.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(results: dict[str, Any], out_dir: Path, stem: str) -> list[Path]:
    paths = throughput_plots(results, out_dir, stem)
    paths.append(tpf_plot(results, out_dir, stem))
    overhead = overhead_plot(results, out_dir, stem)
    if overhead is not None:
        paths.append(overhead)
    return paths

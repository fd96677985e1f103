"""Tables and figures of `benchmarks.shapes` results (JSON in, md + png out).

Re-render a results file: `python -m benchmarks.shapes --render <stem>-shapes.json`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.harness.figures import panels, save
from benchmarks.harness.results import fmt, md_table, publish


def ratio_table(results: dict[str, Any]) -> str:
    header = [
        "model",
        "dtype",
        "batch",
        "B",
        "AR step ms",
        "SDAR all-masked ms",
        "SDAR after-first ms",
        "all-masked / AR",
        "after-first / AR",
        "break-even TPF",
        "AR bound",
        "AR % of limit",
        "SDAR % of limit",
    ]
    rows = []
    for r in sorted(
        (r for r in results["rows"] if not r.get("preload_compare")),
        key=lambda r: (r["model"], r["dtype"], r["block_size"], r["batch"]),
    ):
        roof = r["roofline"]
        rows.append(
            [
                r["model"],
                r["dtype"],
                r["batch"],
                r["block_size"],
                fmt(r["ar_step_ms"], 1),
                fmt(r["sdar_all_masked_ms"], 1),
                fmt(r["sdar_after_first_ms"], 1),
                fmt(r["ratio_all_masked"]),
                fmt(r["ratio_after_first"]),
                fmt(r["break_even_tpf"]),
                roof["ar"]["bound"],
                f"{100 * roof['ar']['fraction_of_limit']:.0f}%",
                f"{100 * roof['all_masked']['fraction_of_limit']:.0f}%",
            ]
        )
    return md_table(header, rows)


def regime_table(results: dict[str, Any]) -> str:
    """Where each engine leaves the memory-bound regime, measured and predicted.

    Measured: the first batch whose step takes >= 1.5x the batch-1 step
    (weights are read once per forward, so a memory-bound step barely grows
    with the batch). Predicted: the first batch the roofline calls
    compute-bound.
    """
    groups: dict[tuple[str, str, str], list[tuple[int, float, str]]] = defaultdict(list)
    for r in results["rows"]:
        if r.get("preload_compare"):
            continue
        ar_key = (r["model"], r["dtype"], "AR")
        if r["block_size"] == 4:  # AR is repeated in every B's row
            groups[ar_key].append((r["batch"], r["ar_step_ms"], r["roofline"]["ar"]["bound"]))
        groups[(r["model"], r["dtype"], f"SDAR B={r['block_size']} (all masked)")].append(
            (r["batch"], r["sdar_all_masked_ms"], r["roofline"]["all_masked"]["bound"])
        )
    rows = []
    for (model, dtype, engine), pts in sorted(groups.items()):
        pts.sort()
        base = pts[0][1] if pts[0][0] == 1 else None
        measured = next((b for b, ms, _ in pts if base and ms >= 1.5 * base), None)
        predicted = next((b for b, _, bound in pts if bound == "compute"), None)
        growth = " / ".join(f"{ms / base:.2f}" for _, ms, _ in pts) if base else "-"
        rows.append(
            [model, dtype, engine, growth,
             measured if measured else f"> {pts[-1][0]}",
             predicted if predicted else f"> {pts[-1][0]}"]
        )  # fmt: skip
    batches = sorted({r["batch"] for r in results["rows"]})
    return md_table(
        ["model", "dtype", "engine", f"step / batch-1 step at batch {'/'.join(map(str, batches))}",
         "turns (measured, >= 1.5x)", "turns (roofline)"],
        rows,
    )  # fmt: skip


def machine_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [["read bandwidth", f"{m['bandwidth_gb_s']} GB/s"]]
    for dtype, gflops in m["matmul_gflops"].items():
        rows.append([f"matmul {dtype}", f"{gflops} GFLOP/s"])
        rows.append([f"ridge point {dtype}", f"{gflops / m['bandwidth_gb_s']:.0f} FLOP/byte"])
    rows.append(["threads", m["threads"]])
    when = (
        f"re-measured {results['machine_remeasured']}, same threads and LD_PRELOAD"
        if results.get("machine_remeasured")
        else "measured in this run"
    )
    return md_table([f"machine limit ({when})", "value"], rows)


def preload_table(results: dict[str, Any]) -> str:
    gain = results.get("preload_gain") or []
    if not gain:
        return ""
    rows = [
        [g["model"], g["dtype"], g["engine"], g["batch"], g["step"], g["without_ms"], g["with_ms"],
         fmt(g["speedup"])]
        for g in gain
    ]  # fmt: skip
    return md_table(
        ["model", "dtype", "engine", "batch", "step", "no preload ms", "preload ms", "speed-up"],
        rows,
    )


def render(results: dict[str, Any]) -> str:
    parts = [
        f"# SDAR step vs AR step, realistic shapes ({results['environment']['machine']})",
        "",
        machine_table(results),
        "",
        "Step times are medians of whole engine steps (scheduling, forward, lm_head, "
        "unmasking/sampling, bookkeeping). break-even TPF = (all-masked + after-first) / 2 "
        "/ AR step: SDAR decodes faster than AR when its tokens per forward exceed it. "
        "% of limit = roofline time max(bytes / bandwidth, FLOPs / matmul peak) / measured step "
        "(above 100%: the model undercounts what the machine reaches, e.g. weights of the small "
        "MoE partly in the VM's large L3, or oneDNN beating the 2048^3 GEMM peak on some shapes).",
        "",
        ratio_table(results),
        "",
        "Where the step leaves the memory-bound regime:",
        "",
        regime_table(results),
    ]
    pre = preload_table(results)
    if pre:
        parts += ["", f"LD_PRELOAD = {':'.join(results['preload_libs'])}", "", pre]
    return "\n".join(parts) + "\n"


def _series(results: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results["rows"]:
        if not r.get("preload_compare"):
            groups[(r["model"], r["dtype"])].append(r)
    return groups


def plot_ratios(results: dict[str, Any], path: Path) -> Path:
    groups = _series(results)
    fig, axes = panels(len(groups))
    for ax, ((model, dtype), rows) in zip(axes[0], sorted(groups.items())):
        for b, color in ((4, "tab:blue"), (16, "tab:orange")):
            pts = sorted((r["batch"], r) for r in rows if r["block_size"] == b)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax.plot(xs, [p[1]["ratio_all_masked"] for p in pts], "o-", color=color,
                    label=f"B={b} all masked")  # fmt: skip
            ax.plot(xs, [p[1]["ratio_after_first"] for p in pts], "s--", color=color,
                    label=f"B={b} after first")  # fmt: skip
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch (requests)")
        ax.set_ylabel("SDAR step / AR step")
        ax.set_title(f"{model}\n{dtype}", fontsize=9)
        ax.legend(fontsize=7)
    return save(fig, path)


def plot_roofline(results: dict[str, Any], path: Path) -> Path:
    """Achieved GFLOP/s vs arithmetic intensity, under the measured roofs."""
    m = results["machine"]
    bw = m["bandwidth_gb_s"]
    groups = _series(results)
    fig, axes = panels(len(groups))
    for ax, ((model, dtype), rows) in zip(axes[0], sorted(groups.items())):
        peak = m["matmul_gflops"][dtype]
        xs = [0.1 * 1.5**i for i in range(40)]
        ax.plot(xs, [min(peak, bw * x) for x in xs], color="gray", linewidth=1, label="roofline")
        for name, marker, label in (
            ("ar", "o", "AR step"),
            ("all_masked", "^", "SDAR all masked"),
            ("after_first", "v", "SDAR after first"),
        ):
            for b, color in ((4, "tab:blue"), (16, "tab:orange")):
                pts = [r for r in rows if r["block_size"] == b]
                if name == "ar":
                    if b == 16:
                        continue
                    color = "black"
                key = {"ar": "ar_step_ms", "all_masked": "sdar_all_masked_ms",
                       "after_first": "sdar_after_first_ms"}[name]  # fmt: skip
                xi = [r["roofline"][name]["gflop"] / r["roofline"][name]["bytes_gb"] for r in pts]
                yi = [r["roofline"][name]["gflop"] / (r[key] / 1e3) for r in pts]
                ax.scatter(xi, yi, marker=marker, color=color, s=18,
                           label=label if name == "ar" else f"{label} B={b}")  # fmt: skip
                for r, x, y in zip(pts, xi, yi):
                    ax.annotate(str(r["batch"]), (x, y), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("FLOP / byte read")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{model}\n{dtype} (labels: batch)", fontsize=9)
        ax.legend(fontsize=6)
    return save(fig, path)


def write(results: dict[str, Any], out: Path, name: str) -> Path:
    """JSON, tables and both figures of one run."""
    results["figures"] = [f"{name}-ratio.png", f"{name}-roofline.png"]
    draw = {
        results["figures"][0]: lambda p: plot_ratios(results, p),
        results["figures"][1]: lambda p: plot_roofline(results, p),
    }
    return publish(results, out, name, render(results), draw)

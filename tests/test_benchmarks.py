"""The benchmark suite's quick mode as a smoke test (benchmarks/README.md).

Runs `python -m benchmarks.run --quick` into a temporary directory and
checks that every figure and table is produced and that the numbers are
sane: every cell present, throughputs > 0, ratios finite, TPF >= 1. It
never asserts speed: wall-clock numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib", reason="benchmark figures need matplotlib (test extra)")

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1, list(out.iterdir())
    return out, json.loads(files[0].read_text())


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_no_phase_failed(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    assert r["errors"] == {}
    for key in (
        "schema_version", "date", "mode", "machine", "environment", "suite", "grid",
        "cells", "ratios", "overhead", "serving", "tpf_vs_threshold", "figures", "table",
    ):  # fmt: skip
        assert key in r, key
    assert r["mode"] == "quick"


def test_every_cell_measured_by_every_method(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    have = {(c["model"], c["method"], c["batch"], c["output_len"]) for c in r["cells"]}
    for cell in r["grid"]["cells"]:
        key = (cell["model"], cell["batch"], cell["output_len"])
        assert (key[0], "ar", *key[1:]) in have, key
        for block in cell["block_sizes"]:
            for strategy in cell["strategies"]:
                tail = "static" if strategy.endswith("static") else "dyn0.9"
                for prefix in ("sdar", "ref"):
                    assert (key[0], f"{prefix}-b{block}-{tail}", *key[1:]) in have, (key, prefix)
    for c in r["cells"]:
        assert _finite_positive(c["throughput_tok_s"]), c
        assert c["output_tokens"] == c["batch"] * c["output_len"], c
        assert 0 < c["latency_p50_s"] <= c["latency_p90_s"] <= c["wall_s"] * 1.001, c


def test_ratios_and_tokens_per_forward(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    sdar_cells = [c for c in r["cells"] if c["kind"] == "sdar"]
    assert len(r["ratios"]) == len(sdar_cells) > 0
    for row in r["ratios"]:
        assert _finite_positive(row["vs_ar"]), row
        assert _finite_positive(row["vs_reference"]), row
        # Denoising forwards: at most one per generated token.
        assert row["tpf"] >= 1.0, row
        assert row["reference_denoise_tpf"] >= 1.0, row
        # The reference also counts its prefill and commit forwards.
        assert _finite_positive(row["reference_tpf"]), row
    refs = [c for c in r["cells"] if c["kind"] == "reference"]
    assert any(c["extrapolated"] for c in refs) and any(not c["extrapolated"] for c in refs)


def test_overhead_breakdown(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    kinds = {(o["kind"], o["batch"]) for o in r["overhead"]}
    assert {("sdar", 1), ("sdar", 8), ("ar", 1), ("ar", 8)} <= kinds
    for o in r["overhead"]:
        assert o["steps"] > 0
        # Shares are rounded to 4 decimals each: allow their rounding error.
        assert 0.9 < sum(o["shares"].values()) <= 1.0 + 1e-4 * len(o["shares"]), o
        assert o["shares"]["model_forward"] > 0
        assert o["biggest_non_forward_cost"] in o["shares"]


def test_serving_sweep(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    rates = r["serving"]["rates"]
    assert len(rates) == len(r["suite"]["serving"]["rates"])
    for row in rates:
        assert row["completed"] == r["serving"]["num_prompts"]
        assert _finite_positive(row["output_throughput"])
        assert _finite_positive(row["mean_ttft_ms"]) and _finite_positive(row["mean_itl_ms"])
        assert row["sdar_committed_tokens"] == row["total_output_tokens"]
        assert row["tpf"] >= 1.0


def test_tpf_vs_threshold(results: tuple[Path, dict[str, Any]]) -> None:
    _, r = results
    tpf = r["tpf_vs_threshold"]
    synthetic = sorted(tpf["synthetic"], key=lambda s: s["threshold"])
    assert synthetic and all(s["tpf"] >= 1.0 for s in synthetic)
    # A lower threshold never unmasks fewer slots per step.
    assert synthetic[0]["tpf"] >= synthetic[-1]["tpf"]
    # The shipped trained model: its confidences are real, so dynamic
    # decoding commits several tokens per forward; static (one slot per
    # step, and the slots after EOS still decoded) stays below one.
    addition = tpf["addition"]
    assert "skipped" not in addition, addition
    for row in addition["rows"]:
        assert row["accuracy"] >= 0.8, row
        if row["strategy"] == "low_confidence_dynamic":
            assert row["tpf"] > 1.5, row
        else:
            assert 0 < row["tpf"] <= 1.0, row


def test_figures_and_table(results: tuple[Path, dict[str, Any]]) -> None:
    out, r = results
    names = r["figures"]
    assert any("throughput" in n for n in names)
    assert any("tpf-threshold" in n for n in names)
    assert any("overhead" in n for n in names)
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    table = (out / r["table"]).read_text()
    for heading in ("Offline throughput", "Engine overhead", "Serving", "Tokens per forward"):
        assert heading in table

    from benchmarks.table import render

    assert render(r) == table


def test_trained_pairs_quick(tmp_path: Path) -> None:
    """`python -m benchmarks.trained --quick`: the shipped addition pair
    through vLLM (SDAR under the plugin, its AR parent under stock vLLM, as
    verified by benchmarks.engine.verify), every method at every batch."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.trained", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    (path,) = tmp_path.glob("*-trained-quick.json")
    r = json.loads(path.read_text())
    assert r["errors"] == {} and set(r["pairs"]) == {"addition"}
    engines = r["pairs"]["addition"]["engines"]
    assert engines["ar"]["scheduler"] == "vllm.v1.core.sched.scheduler.Scheduler"
    assert engines["ar"]["architecture"] == "Qwen3ForCausalLM"
    assert "Sdar" in engines["sdar"]["scheduler"] and engines["sdar"]["block_size"] == 4
    plan = r["plan"]
    have = {(c["method"], c["batch"]) for c in r["cells"]}
    methods = {"ar", "sdar-b4-static", *(f"sdar-b4-dyn{t:g}" for t in plan["thresholds"])}
    assert have == {(m, b) for m in methods for b in plan["batches"]}
    for c in r["cells"]:
        assert _finite_positive(c["throughput_tok_s"]), c
        assert c["problems"] == (plan["batch1_problems"] if c["batch"] == 1 else plan["problems"])
        assert c["accuracy"] >= 0.5, c  # a trained model, on held-out problems
        assert 0 < c["latency_p50_s"] <= c["latency_p90_s"], c
        if c["kind"] == "sdar" and c["strategy"] == "low_confidence_dynamic":
            assert c["tpf"] > 1.0, c  # real confidences: several tokens per forward
    assert len(r["comparison"]) == len(r["cells"]) - len(plan["batches"])
    assert all(_finite_positive(row["vs_ar"]) for row in r["comparison"])
    assert (tmp_path / r["figure"]).exists() and path.with_suffix(".md").exists()

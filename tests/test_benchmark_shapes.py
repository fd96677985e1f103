"""The shapes/roofline benchmark (issue 12): its cost model and a quick run.

The cost model is arithmetic that must hold by construction (weights read
once per forward, KV per request, MoE experts touched); the quick run goes
through real vLLM engines (tiny model) and checks every number is produced
and consistent. Nothing here asserts speed.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.projection import project
from benchmarks.roofline import Shape, expected_experts, forward_cost, limit_s
from benchmarks.shapes_analysis import analyse

REPO = Path(__file__).resolve().parent.parent
DENSE = Shape(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, vocab=151936,
              intermediate=3072)  # fmt: skip
MOE = Shape(hidden=1024, layers=12, heads=16, kv_heads=2, head_dim=128, vocab=151936,
            experts=64, experts_per_tok=4, moe_intermediate=384)  # fmt: skip
MACHINE = {"bandwidth_gb_s": 12.0, "matmul_gflops": {"float32": 200.0, "bfloat16": 1000.0}}


def test_weights_are_read_once_per_forward_whatever_the_tokens() -> None:
    one = forward_cost(DENSE, 1, 1, 1, 64, "float32")
    eight = forward_cost(DENSE, 8, 4, 1, 64, "float32")
    # Only the gathered embedding rows grow with the tokens.
    assert eight["weight_bytes"] - one["weight_bytes"] == 4 * 7 * DENSE.hidden
    assert eight["flops"] > 7 * one["flops"] / 2
    assert forward_cost(DENSE, 1, 1, 1, 64, "bfloat16")["weight_bytes"] * 2 == one["weight_bytes"]


def test_kv_reads_scale_with_requests_not_query_tokens() -> None:
    block = forward_cost(DENSE, 8, 4, 1, 100, "float32")["kv_bytes"]
    assert block == forward_cost(DENSE, 1, 1, 1, 100, "float32")["kv_bytes"]
    assert forward_cost(DENSE, 8, 8, 8, 100, "float32")["kv_bytes"] == 8 * block


def test_moe_reads_the_experts_the_tokens_touch() -> None:
    assert expected_experts(64, 4, 1) == pytest.approx(4)
    assert expected_experts(64, 4, 1000) == pytest.approx(64, rel=1e-3)
    few = forward_cost(MOE, 1, 1, 1, 64, "bfloat16")
    many = forward_cost(MOE, 256, 256, 64, 64, "bfloat16")
    assert many["weight_bytes"] > 3 * few["weight_bytes"]
    measured = forward_cost(MOE, 8, 4, 1, 64, "bfloat16", experts_per_layer=5.0)
    assert measured["experts_per_layer"] == 5.0


def test_roofline_turns_compute_bound_with_tokens() -> None:
    assert (
        limit_s(forward_cost(DENSE, 1, 1, 1, 64, "float32"), MACHINE, "float32")["bound"]
        == "memory"
    )
    assert (
        limit_s(forward_cost(DENSE, 1024, 512, 64, 64, "float32"), MACHINE, "float32")["bound"]
        == "compute"
    )


def test_projection_speedup_is_tpf_where_memory_bound() -> None:
    rows = project(tpf=2.0, block=4, batches=(1,))
    dense = [r for r in rows if r["model"] != "SDAR-30B-A3B"]
    assert dense and all(r["speedup"] == pytest.approx(2.0, rel=0.02) for r in dense)


@pytest.mark.engine
def test_quick_run_produces_every_number(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.shapes", "--quick", "--threads", "1",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = tmp_path.glob("*-shapes-quick.json")
    results = json.loads(path.read_text())
    rows = results["rows"]
    # batches 1 and 4, B = 4 and 16, against the AR engine of the same weights
    assert sorted((r["batch"], r["block_size"]) for r in rows) == [(1, 4), (1, 16), (4, 4), (4, 16)]
    for r in rows:
        for key in ("ratio_all_masked", "ratio_after_first", "break_even_tpf"):
            assert math.isfinite(r[key]) and r[key] > 0
        for step in r["roofline"].values():
            assert step["bytes_gb"] > 0 and step["gflop"] > 0 and step["fraction_of_limit"] > 0
    engines = {f["engines"]["scheduler"].rsplit(".", 1)[-1] for f in results["fragments"]}
    assert engines == {"Scheduler", "SdarScheduler"}
    assert results["machine"]["bandwidth_gb_s"] > 0
    # The rows are a pure function of the recorded steps and limits (--reanalyse relies on it).
    assert analyse(results["fragments"], results["machine"]) == rows
    for name in results["figures"]:
        assert (tmp_path / name).stat().st_size > 0
    assert "break-even TPF" in (tmp_path / path.with_suffix(".md").name).read_text()

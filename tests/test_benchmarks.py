"""The benchmark harness (benchmarks/harness) and the trained-pairs study.

The harness pieces every study stands on are checked directly: interleaved
rounds, result files, and a worker process kept alive and called in turn.
The trained-pairs study runs its quick mode for real (vLLM engines) and its
outputs are checked to be produced and sane. Nothing asserts speed:
wall-clock numbers depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.results import interleave, md_table, median_run, publish, stem, summary
from benchmarks.harness.workers import Worker

REPO = Path(__file__).resolve().parent.parent
ECHO = f"{__name__}:Echo"


class Echo:
    """A worker factory: the harness's worker protocol without an engine."""

    def __init__(self, tag: str, fail: bool = False) -> None:
        if fail:
            raise RuntimeError("factory failed on purpose")
        self.info = {"tag": tag, "pid": os.getpid()}

    def measure(self, **call: Any) -> dict[str, Any]:
        return {"call": call, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS")}


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_interleave_runs_variants_in_turn_round_by_round() -> None:
    calls: list[str] = []

    def variant(name: str) -> Any:
        return lambda: calls.append(name) or len(calls)

    out = interleave({"a": variant("a"), "b": variant("b")}, rounds=3, warmup=True)
    assert calls == ["a", "b"] * 4  # one warm-up call each, then ABABAB
    assert out == {"a": [3, 5, 7], "b": [4, 6, 8]}
    s = summary([3.0, 1.0, 2.0, 5.0, 4.0])
    assert s["median_ms"] == 3.0 and s["n"] == 5 and s["p10_ms"] <= 3.0 <= s["p90_ms"]
    assert median_run([{"w": 3}, {"w": 1}, {"w": 2}], key=lambda r: r["w"]) == {"w": 2}


def test_publish_writes_figures_then_json_and_markdown(tmp_path: Path) -> None:
    name = stem("study", quick=True)
    assert name.endswith("-study-quick") and name[:4].isdigit()
    table = md_table(["a", "b"], [[1, 0.5], [None, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 0.50 |", "| - | x |"]
    path = publish({"k": 1}, tmp_path, name, table, {f"{name}.png": lambda p: p.write_bytes(b"x")})
    assert json.loads(path.read_text()) == {"k": 1}
    assert (tmp_path / f"{name}.md").read_text() == table + "\n"
    assert (tmp_path / f"{name}.png").read_bytes() == b"x"


def test_worker_keeps_an_object_alive_in_its_own_process(tmp_path: Path) -> None:
    proc_env = {**os.environ, "SDAR_BENCH_THREADS": "1"}
    workers = [Worker(ECHO, {"tag": t}, proc_env, tmp_path / t, t) for t in ("a", "b")]
    try:
        assert [w.info["tag"] for w in workers] == ["a", "b"]
        assert len({os.getpid(), *(w.info["pid"] for w in workers)}) == 3
        calls = {w.label: (lambda w=w: w.measure(batch=4)) for w in workers}
        out = interleave(calls, rounds=2)
        for w in workers:
            # Same process every call; the harness set its threads before any import.
            expected = {"call": {"batch": 4}, "pid": w.info["pid"], "threads": "1"}
            assert out[w.label] == [expected, expected]
    finally:
        for w in workers:
            w.close()
    assert all(w.proc.returncode == 0 for w in workers)
    with pytest.raises(RuntimeError, match="factory failed on purpose"):
        Worker(ECHO, {"tag": "d", "fail": True}, proc_env, tmp_path / "d", "d")


@pytest.mark.engine
def test_trained_pairs_quick(tmp_path: Path) -> None:
    """`python -m benchmarks.trained --quick`: the shipped addition pair
    through vLLM (SDAR under the plugin, its AR parent under stock vLLM, as
    verified by benchmarks.harness.engines.verify), every method at every batch."""
    pytest.importorskip("matplotlib", reason="benchmark figures need matplotlib (test extra)")
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
    assert r["threads"] == 1 and r["machine"]["cores"] >= 1
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
    figure = tmp_path / r["figure"]
    assert figure.read_bytes().startswith(b"\x89PNG")
    table = path.with_suffix(".md").read_text()
    assert "| ar | 1 |" in table and "Issue targets" in table
    # benchmarks.trained_report re-draws the same tables from the JSON alone.
    figure.unlink()
    rendered = subprocess.run(
        [sys.executable, "-m", "benchmarks.trained_report", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert path.with_suffix(".md").read_text() == table and figure.exists()

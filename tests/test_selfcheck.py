"""`vllm-sdar selfcheck` as a user runs it (CI runs it on the CPU)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vllm_sdar.tools.selfcheck import STRATEGIES, Row, render
from vllm_sdar.tools.server_process import cli

pytestmark = pytest.mark.engine


def test_selfcheck_passes_on_this_machine(tmp_path: Path) -> None:
    proc = subprocess.run(
        [cli(), "selfcheck", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    import vllm

    assert f"vLLM {vllm.__version__}" in out
    assert "platform: " in out and "attention backend: CPU_ATTN" in out
    for arch in ("dense", "moe"):
        for block in (4, 8):
            for strategy in STRATEGIES:
                assert f"| {arch} | {block} | 1 | {strategy} | 5 | PASS |" in out
    assert "16/16 PASS" in out and "| FAIL |" not in out


def test_table_reports_failures() -> None:
    rows = [
        Row("dense", 4, 1, "sequential", 5, []),
        Row("moe", 8, 1, "sequential", 5, ["prompt len 3: vLLM [1] != reference [2]"]),
    ]
    text = render(rows, {"vllm-sdar selfcheck": "vLLM x"})
    assert "| moe | 8 | 1 | sequential | 5 | FAIL |" in text
    assert "1/2 PASS -- FAILED" in text and "reference [2]" in text

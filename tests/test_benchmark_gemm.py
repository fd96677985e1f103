"""The small-M GEMM study runs and reports sane numbers (never speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import gemm


def test_quick_run_times_every_row_count(tmp_path: Path) -> None:
    gemm.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-gemm-quick.json")
    rows = json.loads(json_file.read_text())["rows"]
    # fp32 always has PyTorch's path; vLLM's oneDNN where the CPU builds it.
    assert {"float32"} <= {r["dtype"] for r in rows}
    assert any(r["path"] == "torch F.linear" and r["dtype"] == "float32" for r in rows)
    for r in rows:
        assert all(r[f"ms_m{m}"] > 0 for m in gemm.ROWS)
        assert all(math.isfinite(r[f"x_m{m}"]) and r[f"x_m{m}"] > 0 for m in gemm.ROWS[1:])
    assert "| float32 | o_proj |" in json_file.with_suffix(".md").read_text()

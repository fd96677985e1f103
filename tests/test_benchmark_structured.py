"""The structured-outputs cost benchmark runs and reports sane numbers (never speed)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import structured


def test_quick_run_writes_every_variant(tmp_path: Path) -> None:
    structured.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-structured-quick.json")
    report = json.loads(json_file.read_text())
    assert set(report["results"]) == {"step/b1", "step/b4"}
    for entry in report["results"].values():
        for variant in structured.VARIANTS:
            s = entry[variant]
            assert s["n"] == report["rounds"]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
    assert "| step | 1 |" in json_file.with_suffix(".md").read_text()

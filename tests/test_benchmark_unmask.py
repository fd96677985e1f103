"""The batched-unmasking benchmark runs and reports sane numbers (never speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import unmask


def test_quick_run_writes_every_mode_and_batch(tmp_path: Path) -> None:
    # HEAD as "before": any checkout has it (a shallow CI clone may lack the
    # pinned default); the machinery is what is checked here.
    unmask.main(["--quick", "--before", "HEAD", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-unmask-quick.json")
    report = json.loads(json_file.read_text())
    assert set(report["results"]) == {f"{m}/b{b}" for m in unmask.MODES for b in (1, 4)}
    for entry in report["results"].values():
        for variant in ("before", "after"):
            s = entry[variant]
            assert s["n"] == report["rounds"]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
        assert math.isfinite(entry["after_vs_before"])
    assert "| greedy-dyn0.9 | 1 |" in json_file.with_suffix(".md").read_text()

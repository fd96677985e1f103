"""The sampling-transforms benchmark runs and reports sane numbers (never speed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import sampling


def test_quick_run_writes_every_variant(tmp_path: Path) -> None:
    # HEAD as "before": any checkout has it (a shallow CI clone may lack the
    # pinned default); the machinery is what is checked here.
    sampling.main(["--quick", "--before", "HEAD", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-sampling-quick.json")
    report = json.loads(json_file.read_text())
    assert set(report["results"]) == {"greedy", "seeded"}
    for variants in report["results"].values():
        assert set(variants) == {"before", "after", "after+options"}
        for s in variants.values():
            assert s["n"] == report["rounds"]
            assert 0 < s["p10_ms"] <= s["median_ms"] <= s["p90_ms"]
            assert math.isfinite(s["vs_before"])
    assert "| greedy | after |" in json_file.with_suffix(".md").read_text()

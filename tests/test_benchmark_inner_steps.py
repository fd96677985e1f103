"""The steps-per-iteration axis of the trained study (`benchmarks.trained
--steps-per-iteration`) runs AR and SDAR at several k side by side, checks
the k variants agree token for token, and counts iterations and forwards
(never asserts speed)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import trained


def test_quick_run_compares_k_values(tmp_path: Path) -> None:
    trained.main(["--steps-per-iteration", "--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-inner-steps-quick.json")
    (case,) = json.loads(json_file.read_text())["cases"]
    cells = case["cells"]
    assert set(cells) == {"ar", "sdar-k1", "sdar-kblock"}
    one, block = cells["sdar-k1"], cells["sdar-kblock"]
    # The same tokens from the same denoising forwards (the run checks the
    # token ids themselves), in fewer engine iterations when k > 1.
    assert one["tokens"] == block["tokens"] and one["forwards"] == block["forwards"]
    # k = 1: at most one forward per request (batch 2) per iteration.
    assert one["forwards"] <= 2 * one["iterations"]
    assert block["iterations"] <= one["iterations"]
    for label, c in cells.items():
        assert c["tokens"] > 0 and c["tok_s"] > 0, label
        assert 0 < c["ttft_mean_s"] <= c["latency_mean_s"], label
    assert "| sdar-addition | 2 | sdar-kblock |" in json_file.with_suffix(".md").read_text()

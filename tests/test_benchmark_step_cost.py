"""The step-cost benchmark runs AR, SDAR and SDAR at a git revision side by
side and accounts for every stage of a step (never asserts speed)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import step_cost


def test_quick_run_times_every_stage_of_every_engine(tmp_path: Path) -> None:
    step_cost.main(["--quick", "--before", "HEAD", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-step-cost-quick.json")
    report = json.loads(json_file.read_text())
    (case,) = report["cases"]
    assert set(case["cells"]) == {"ar", "sdar", "sdar@HEAD"}
    repo = Path(step_cost.__file__).resolve().parent.parent
    # The old code really ran from its exported tree, today's from the repo.
    assert not case["cells"]["sdar@HEAD"]["code"].startswith(str(repo))
    assert case["cells"]["sdar"]["code"] == str(repo / "vllm_sdar")
    for label, cell in case["cells"].items():
        ms = cell["ms_per_step"]
        assert cell["steps"] > 0, label
        assert set(ms) == set(step_cost.STAGES), label
        assert all(v >= 0 for v in ms.values()), (label, ms)
        # The stages inside a step add up to no more than the step.
        inside = ms["forward"] + ms["logits"] + ms["prepare"] + ms["sample"]
        assert inside + ms["schedule"] + ms["update"] <= ms["step"] * 1.001, (label, ms)
        assert ms["host"] == ms["step"] - ms["forward"] - ms["logits"]
    # AR emits one token per request per step: 8 tokens take 8 steps.
    assert case["cells"]["ar"]["steps"] == 8
    assert "| sdar-addition | 2 | sdar@HEAD |" in json_file.with_suffix(".md").read_text()

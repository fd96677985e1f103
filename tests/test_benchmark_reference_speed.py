"""The plugin-vs-reference-vs-AR study runs the three decoders side by side
and checks the plugin's tokens against the reference's (never asserts speed)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import reference_speed


def test_quick_run_compares_three_decoders_on_equal_tokens(tmp_path: Path) -> None:
    reference_speed.main(["--quick", "--out", str(tmp_path)])
    (json_file,) = tmp_path.glob("*-reference-speed-quick.json")
    report = json.loads(json_file.read_text())
    (pair,) = report["pairs"]
    assert pair["plugin_equals_reference"] is True
    assert set(pair["cells"]) == {*reference_speed.DECODERS, "sdar-all", "ar-all"}
    # Same problems, same decoding: the plugin and the reference emit the
    # same number of tokens; every decoder emitted some.
    ref_tokens = pair["cells"]["reference"]["tokens"]
    assert pair["cells"]["sdar"]["tokens"] == pair["cells"]["sdar-all"]["tokens"] == ref_tokens
    for cell in pair["cells"].values():
        assert cell["tokens"] > 0 and cell["wall_s"] > 0
    assert "| addition | 4 |" in json_file.with_suffix(".md").read_text()

"""Every test module that starts a vLLM engine carries the `engine` marker
(`pytest -m "not engine"` is the quick run)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# Ways a test starts an engine: the shared LLM helper, vLLM's LLM, a server
# (in-process helper or the CLI), a script/benchmark run in a subprocess.
STARTS_ENGINE = re.compile(
    r"\bsdar_llm\(|\bLLM\(|\bserve\(|\bcli\(\)|python -m benchmarks|python -m vllm"
)
MARKED = re.compile(
    r"^pytestmark = (\[.*)?pytest\.mark\.engine\b|^@pytest\.mark\.engine$", re.M
)


def test_engine_tests_are_marked() -> None:
    unmarked = [
        p.name
        for p in sorted(TESTS.glob("test_*.py"))
        if p.name != Path(__file__).name
        and STARTS_ENGINE.search(p.read_text())
        and not MARKED.search(p.read_text())
    ]
    assert not unmarked, f"start an engine but lack @pytest.mark.engine: {unmarked}"

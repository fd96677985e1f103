"""Short names offline, from a fresh script outside the repository.

An air-gapped user sets HF_HUB_OFFLINE=1 and runs `LLM(model="sdar-addition")`
from wherever they are: each case runs in a new interpreter (so nothing
this test session installed helps) from an empty temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_sdar.tools.server_process import server_env

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.engine

SCRIPT = """
from vllm import LLM, SamplingParams
llm = LLM(model="sdar-addition", dtype="float32", max_model_len=256, enforce_eager=True)
assert llm.llm_engine.model_config.served_model_name == "sdar-addition"
out = llm.generate(["12+34="], SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
print("ANSWER", repr(out[0].outputs[0].text))
"""


def _offline_env() -> dict[str, str]:
    env = server_env()  # HF_HUB_OFFLINE=1; PYTHONPATH kept
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process engine: faster start
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return env


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    assert not (cwd / "sdar-addition").exists()
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_offline_env(), capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip


def test_llm_short_name_offline_from_a_temp_dir(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = _run([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ANSWER '46'" in proc.stdout, proc.stdout[-2000:]


def test_offline_example_runs_offline(tmp_path: Path) -> None:
    proc = _run([str(REPO / "examples" / "offline.py")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'12+34=' -> '46'" in proc.stdout, proc.stdout[-2000:]

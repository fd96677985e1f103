"""Short model names: mapping, local-directory precedence, block size from names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vllm_sdar.algorithm.config import block_size_from_name
from vllm_sdar.serving import names


def test_short_names_cover_release_and_block_variants() -> None:
    assert names.SHORT_NAMES["sdar-30b-moe"] == "JetLM/SDAR-30B-A3B-Chat"
    assert names.SHORT_NAMES["sdar-30b-sci"] == "JetLM/SDAR-30B-A3B-Sci"
    assert names.SHORT_NAMES["sdar-1.7b"] == "JetLM/SDAR-1.7B-Chat"
    assert names.SHORT_NAMES["sdar-8b-b16"] == "JetLM/SDAR-8B-Chat-b16"
    assert len(names.SHORT_NAMES) == 5 * 4 + 6
    # The trained toy pairs ship in the package: usable offline by name.
    for name in ("sdar-addition", "ar-addition", "sdar-sort", "ar-sort", "sdar-tools", "ar-tools"):
        assert (Path(names.SHORT_NAMES[name]) / "model.safetensors").is_file(), name


def test_local_directory_wins(tmp_path: Path) -> None:
    (tmp_path / "sdar-4b").mkdir()
    table = names.redirects(tmp_path)
    assert "sdar-4b" not in table and table["sdar-8b"] == "JetLM/SDAR-8B-Chat"


@pytest.mark.parametrize(
    "model,block",
    [("JetLM/SDAR-4B-Chat-b16", 16), ("/models/SDAR-8B-Chat-b64/", 64), ("sdar-4b", None)],
)
def test_block_size_from_name(model: str, block: int | None) -> None:
    assert block_size_from_name(model) == block


def test_inherited_table_is_rewritten_for_this_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VLLM_MODEL_REDIRECT_PATH", raising=False)
    monkeypatch.delenv("SDAR_PLUGIN_REDIRECT_TABLE", raising=False)
    names.install_redirects()  # as in a parent process, from another cwd
    (tmp_path / "sdar-4b").mkdir()
    monkeypatch.chdir(tmp_path)
    names.install_redirects()  # the child: its cwd has a local sdar-4b
    table = json.loads(Path(os.environ["VLLM_MODEL_REDIRECT_PATH"]).read_text())
    assert "sdar-4b" not in table


def test_user_table_is_respected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    monkeypatch.setenv("VLLM_MODEL_REDIRECT_PATH", str(mine))
    names.install_redirects()
    assert os.environ["VLLM_MODEL_REDIRECT_PATH"] == str(mine)


def test_serve_model_argument_parsing() -> None:
    assert names._serve_model_arg(["/x/vllm", "serve", "sdar-4b", "--port", "1"]) == "sdar-4b"
    assert names._serve_model_arg(["vllm", "serve", "--model", "sdar-8b"]) == "sdar-8b"
    assert names._serve_model_arg(["vllm", "bench", "serve"]) is None
    assert names._serve_model_arg(["python", "serve", "sdar-4b"]) is None

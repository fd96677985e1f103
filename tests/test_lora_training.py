"""LoRA fine-tuning with the block-diffusion objective (convert/lora.py), no engine.

The adapter is PEFT's format as vLLM reads it, training is deterministic,
`merge_adapter` (no PEFT) equals PEFT's own merge, and the toy build that
makes the shipped adapter runs end to end (smoke budget).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vllm_sdar.convert.lora import (
    ADAPTER_FILES,
    LoraTrainConfig,
    load_sdar,
    merge_adapter,
    train_lora,
)
from vllm_sdar.convert.subtraction import Subtraction
from vllm_sdar.convert.task_base import write_jsonl
from vllm_sdar.convert.toy import DEFAULT_OUT
from vllm_sdar.convert.toy_lora import DEFAULT_ADAPTER
from vllm_sdar.convert.toy_lora import main as toy_lora_main

peft = pytest.importorskip("peft")  # the `train` extra


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, _ = Subtraction(max_digits=2).make_splits(200, 10, seed=0)
    return write_jsonl(train, tmp_path_factory.mktemp("data") / "train.jsonl")


def _train(data: Path, out: Path) -> Path:
    cfg = LoraTrainConfig(
        model=str(DEFAULT_OUT), data=str(data), out=str(out), rank=4, steps=3, batch_size=8,
        base_name="sdar-addition",
    )  # fmt: skip
    return train_lora(cfg)


def test_adapter_is_peft_format_vllm_reads(data: Path, tmp_path: Path) -> None:
    from vllm.config.lora import LoRAConfig
    from vllm.lora.peft_helper import PEFTHelper

    out = _train(data, tmp_path / "a")
    assert sorted(p.name for p in out.iterdir()) == sorted([*ADAPTER_FILES, "lora_training.json"])
    helper = PEFTHelper.from_local_dir(str(out), 256)
    helper.validate_legal(LoRAConfig(max_lora_rank=8))
    assert helper.r == 4
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "sdar-addition"
    assert config["target_modules"] == sorted(config["target_modules"])
    keys = load_file(out / "adapter_model.safetensors")
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    # Training moved B away from PEFT's zero init (the adapter does something).
    assert any(v.abs().sum() > 0 for k, v in keys.items() if "lora_B" in k)


def test_training_is_deterministic(data: Path, tmp_path: Path) -> None:
    a = load_file(_train(data, tmp_path / "a") / "adapter_model.safetensors")
    b = load_file(_train(data, tmp_path / "b") / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_command_line(data: Path, tmp_path: Path) -> None:
    from vllm_sdar.convert.lora import main

    out = tmp_path / "cli"
    args = ["--model", str(DEFAULT_OUT), "--data", str(data), "--out", str(out)]
    assert main([*args, "--rank", "2", "--steps", "2", "--batch-size", "4"]) == 0
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2


def test_merge_equals_peft_merge(tmp_path: Path) -> None:
    # The shipped adapter, merged without PEFT, against PEFT's merge_and_unload.
    merged = merge_adapter(DEFAULT_OUT, DEFAULT_ADAPTER, tmp_path / "merged")
    ours = load_file(merged / "model.safetensors")
    model, *_ = load_sdar(DEFAULT_OUT, torch.float32)
    theirs = peft.PeftModel.from_pretrained(model, str(DEFAULT_ADAPTER)).merge_and_unload()
    state = theirs.state_dict()
    assert ours.keys() == state.keys()
    for key, value in ours.items():
        torch.testing.assert_close(value, state[key], rtol=1e-5, atol=1e-6, msg=key)
    assert (merged / "tokenizer.json").exists() and (merged / "config.json").exists()


def test_toy_build_smoke(tmp_path: Path) -> None:
    toy_lora_main(["--smoke", "--out", str(tmp_path / "adapter")])
    report = json.loads((tmp_path / "adapter" / "eval.json").read_text())
    assert {r["model"] for r in report["results"]} == {"sdar-addition", "+ lora-subtraction"}
    assert {r["task"] for r in report["results"]} == {"subtraction", "addition"}
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_shipped_adapter_eval_is_recorded() -> None:
    report = json.loads((DEFAULT_ADAPTER / "eval.json").read_text())
    rows = {(r["model"], r["task"], r["strategy"]): r for r in report["results"]}
    dynamic = "low_confidence_dynamic"
    base_sub = rows[("sdar-addition", "subtraction", dynamic)]["accuracy"]
    adapted_sub = rows[("+ lora-subtraction", "subtraction", dynamic)]["accuracy"]
    assert base_sub < 0.05 and adapted_sub > 0.7  # the adapter taught a new operation
    assert rows[("+ lora-subtraction", "addition", dynamic)]["accuracy"] > 0.9  # and kept one

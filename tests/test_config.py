"""Configs, option parsing and checkpoint names against the real SDAR release."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from vllm_sdar.algorithm.config import (
    SDARConfig,
    SDARMoeConfig,
    SdarOptions,
    register_hf_configs,
    resolve_block_size,
    resolve_mask_id,
)
from vllm_sdar.algorithm.hf_model import SDARForCausalLM, SDARMoeForCausalLM
from vllm_sdar.tools.tiny import ASSETS

from .conftest import SHARED_FIXTURE


def test_fixture_config_loads_without_remote_code(fixture_dir: Path) -> None:
    register_hf_configs()
    config = AutoConfig.from_pretrained(fixture_dir)  # no trust_remote_code
    assert isinstance(config, SDARConfig)
    assert config.num_hidden_layers == 36 and config.head_dim == 128
    assert resolve_block_size(config) == 4
    assert resolve_mask_id(config) == 151669


def test_register_is_idempotent() -> None:
    import vllm_sdar

    vllm_sdar.register()
    vllm_sdar.register()
    assert AutoConfig.for_model("sdar_moe").__class__ is SDARMoeConfig


def test_fixture_tokenizer(fixture_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(fixture_dir)
    assert len(tok) == 151670
    assert tok.convert_tokens_to_ids("<|MASK|>") == 151669
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645


def test_block_and_mask_resolution_order(fixture_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(fixture_dir)
    bare = SDARConfig()  # as on the Hub: neither field in config.json
    assert resolve_block_size(bare) == 4
    assert resolve_block_size(bare, override=16) == 16
    assert resolve_block_size(SDARConfig(block_size=8)) == 8
    assert resolve_block_size(SDARConfig(block_size=8), override=16) == 16
    assert resolve_mask_id(bare) == 151669
    assert resolve_mask_id(bare, tok) == 151669
    assert resolve_mask_id(SDARConfig(mask_token_id=5), tok) == 5
    assert resolve_mask_id(SDARConfig(mask_token_id=5), tok, override=7) == 7


@pytest.mark.skipif(not SHARED_FIXTURE.is_dir(), reason="shared fixtures not beside this checkout")
def test_vendored_fixture_matches_shared() -> None:
    names = sorted(p.name for p in SHARED_FIXTURE.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(SHARED_FIXTURE, ASSETS, names, shallow=False)
    assert not mismatch and not errors


def _layer_suffixes(names: list[str], layer: int) -> set[str]:
    prefix = f"model.layers.{layer}."
    return {n[len(prefix) :] for n in names if n.startswith(prefix)}


def test_dense_parameter_names_match_release(fixture_dir: Path) -> None:
    index = json.loads((fixture_dir / "model.safetensors.index.json").read_text())
    ckpt = set(index["weight_map"])
    register_hf_configs()
    config = AutoConfig.from_pretrained(fixture_dir)
    with torch.device("meta"):
        model = SDARForCausalLM(config)  # full 36 layers, no memory on meta
    params = {n for n, _ in model.named_parameters()}
    assert ckpt == params


def test_moe_parameter_names_follow_qwen3_moe() -> None:
    config = SDARMoeConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        decoder_sparse_step=1,
        mlp_only_layers=[1],
        vocab_size=256,
    )
    with torch.device("meta"):
        model = SDARMoeForCausalLM(config)
    names = [n for n, _ in model.named_parameters()]
    sparse = _layer_suffixes(names, 0)
    assert "mlp.gate.weight" in sparse
    assert {
        f"mlp.experts.{e}.{p}_proj.weight" for e in range(4) for p in ("gate", "up", "down")
    } <= sparse
    assert _layer_suffixes(names, 1) >= {"mlp.gate_proj.weight", "mlp.down_proj.weight"}
    assert "mlp.gate.weight" not in _layer_suffixes(names, 1)


def test_options_defaults_and_overrides() -> None:
    opts = SdarOptions.parse(None)
    assert opts.remasking_strategy == "low_confidence_dynamic"
    assert opts.denoising(4).steps == 4
    opts = SdarOptions.parse({"denoising_steps": 2, "remasking_strategy": "sequential"})
    assert opts.denoising(8).steps == 2 and opts.denoising(8).strategy == "sequential"
    deploy = SdarOptions.parse({"confidence_threshold": 0.9})
    assert SdarOptions.parse({}, deploy).confidence_threshold == 0.9


@pytest.mark.parametrize(
    "extra,param",
    [
        ({"denoising_steps": 0}, "denoising_steps"),
        ({"denoising_steps": 2.5}, "denoising_steps"),
        ({"remasking_strategy": "random"}, "remasking_strategy"),
        ({"confidence_threshold": 0.0}, "confidence_threshold"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"confidence_threshold": "high"}, "confidence_threshold"),
        ({"confidence_threshold": float("nan")}, "confidence_threshold"),
        ({"eb_threshold": -1}, "eb_threshold"),
        ({"eb_threshold": float("nan")}, "eb_threshold"),
        ({"denoising_steps": True}, "denoising_steps"),
    ],
)
def test_options_rejected_with_parameter_name(extra: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        SdarOptions.parse(extra)


def test_steps_above_block_rejected() -> None:
    with pytest.raises(ValueError, match="denoising_steps"):
        SdarOptions.parse({"denoising_steps": 8}).denoising(4)

"""Writing the released format, and training checkpoints to resume from.

A training checkpoint OUT/checkpoint-<step>/ holds the model in the released
format (so any checkpoint can be evaluated or served as is), the optimizer
and LR-scheduler state, the step, the run's settings and every RNG state.
It is written to a temporary folder and renamed into place, so an
interruption while saving leaves the previous checkpoint as the latest one
rather than a half-written one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from vllm_sdar.algorithm.hf_model import SDARForCausalLM

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


def save_release(
    out: Path, model: SDARForCausalLM, tokenizer: Any, generation_config: GenerationConfig
) -> Path:
    """config.json (model_type sdar, block_size, mask_token_id), safetensors,
    generation_config.json and the tokenizer, loadable without remote code."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_class(out)
    return out


def _portable_tokenizer_class(out: Path) -> None:
    # transformers 5 records a plain fast tokenizer as "TokenizersBackend",
    # a name transformers 4 does not know; "PreTrainedTokenizerFast" loads
    # the same tokenizer.json under both.
    path = out / "tokenizer_config.json"
    if not path.exists():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out: Path,
    step: int,
    model: SDARForCausalLM,
    tokenizer: Any,
    generation_config: GenerationConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: dict[str, Any],
    keep: int,
) -> Path:
    final = out / f"{PREFIX}{step:07d}"
    tmp = out / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_release(tmp, model, tokenizer, generation_config)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        tmp / "optimizer.pt",
    )
    torch.save(rng_state(), tmp / "rng_state.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in list_checkpoints(out)[:-keep] if keep > 0 else []:
        shutil.rmtree(old)
    return final


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in out.glob(f"{PREFIX}*") if (p / STATE_FILE).exists()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(
    path: Path,
    model: SDARForCausalLM,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore everything save_checkpoint wrote; returns the trainer state."""
    from safetensors.torch import load_file

    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(path.glob("*.safetensors")):  # one file, or shards of a big model
        weights.update(load_file(shard))
    model.load_state_dict(weights, strict=True)
    opt = torch.load(path / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    set_rng_state(torch.load(path / "rng_state.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())

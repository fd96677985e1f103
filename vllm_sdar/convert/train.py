"""The conversion training loop: one process, plain PyTorch.

AdamW, linear warmup then cosine (or linear) decay, gradient clipping, a
tqdm progress bar, a checkpoint every `save_every` steps, `resume` from the
latest one. Determinism: the batch of step s and the noise of step s are
pure functions of (seed, s) (see data.batch_order and _noise_generator), so
the same seed gives bit-identical weights on the same machine and software,
and a resumed run gives the weights of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vllm_sdar.convert.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_release,
)
from vllm_sdar.convert.data import batch_order, collate, load_examples
from vllm_sdar.convert.objective import WEIGHTINGS, sdar_loss
from vllm_sdar.convert.source import MASK_TOKEN, from_qwen3

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SUMMARY_FILE = "conversion.json"


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls: type, help: dict[str, str]
) -> None:
    """One `--flag` per field of a training config dataclass (required where
    the field has no default), for the converter's and the LoRA trainer's CLIs."""
    # A trainer's own fields first, the shared keyword-only ones after.
    for field in sorted(dataclasses.fields(config_cls), key=lambda f: bool(f.kw_only)):
        flag = "--" + field.name.replace("_", "-")
        # "int | None" -> int: an optional number is given as a number.
        kind = {"int": int, "float": float, "str": str}.get(str(field.type).split(" ")[0], int)
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, type=kind, help=help.get(field.name))
        else:
            parser.add_argument(flag, default=field.default, type=kind, help=help.get(field.name))


class TrainingInterrupted(RuntimeError):
    """Raised by `stop_after`: the run stopped as if killed after that step."""


@dataclass(frozen=True, kw_only=True)
class Optimization:
    """The learning-rate schedule and objective both trainers share (the
    conversion and LoRA fine-tuning); keyword-only, after each one's own."""

    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eps: float = 1e-3  # lowest noise level t
    weighting: str = "uniform"  # uniform | elbo (1/t)
    max_length: int = 2048
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"

    def check(self) -> None:
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be cosine or linear, got {self.schedule!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError("eps must be in (0, 1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}")


@dataclass(frozen=True)
class ConvertConfig(Optimization):
    model: str  # Qwen3ForCausalLM / Qwen3MoeForCausalLM checkpoint (HF format)
    data: str  # JSONL training records
    out: str
    block_size: int = 4
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-4
    mask_token: str = MASK_TOKEN
    save_every: int = 500
    keep_checkpoints: int = 2
    stop_after: int | None = None  # testing aid: simulate a kill after this step

    # Settings that may change between an interrupted run and its resumption.
    RESUMABLE_CHANGES = ("steps", "save_every", "keep_checkpoints", "stop_after", "out")

    def check(self) -> None:
        if self.block_size < 1:
            raise ValueError("block_size must be >= 1")
        super().check()


def lr_factor(
    step: int, total: int, warmup: int = 0, min_ratio: float = 0.1, schedule: str = "cosine"
) -> float:
    """Multiplier of the peak LR at 0-based `step`: linear warmup, then decay to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def _noise_generator(seed: int, step: int) -> torch.Generator:
    # Tuples of ints hash the same in every process (unlike str).
    return torch.Generator().manual_seed(hash((int(seed), 1, int(step))) & ((1 << 63) - 1))


def _settings(cfg: ConvertConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in cfg.RESUMABLE_CHANGES}


def convert(cfg: ConvertConfig, resume: bool = False) -> Path:
    """Train the SDAR objective from cfg.model; write the release to cfg.out."""
    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    src = from_qwen3(cfg.model, cfg.block_size, cfg.mask_token, DTYPES[cfg.dtype])
    model = src.model.to(cfg.device).train()
    tok = src.tokenizer
    fill_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fill_id
    examples = load_examples(cfg.data, tok, cfg.max_length)

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.schedule),
    )
    state = {"settings": _settings(cfg), "tokens": 0, "trainable_tokens": 0, "log": []}
    start = 0
    checkpoints = list_checkpoints(out) if resume else []
    if checkpoints:
        state = load_checkpoint(checkpoints[-1], model, optimizer, scheduler)
        if state["settings"] != _settings(cfg):
            raise ValueError(
                f"{checkpoints[-1]} was written with different settings: "
                f"{state['settings']} vs {_settings(cfg)}"
            )
        start = state["step"]

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="sdar", leave=False)
    for step in bar:
        idx = batch_order(len(examples), cfg.batch_size, step, cfg.seed)
        batch = collate([examples[i] for i in idx], cfg.block_size, fill_id, pad_id)
        loss = sdar_loss(
            model,
            batch,
            cfg.block_size,
            src.mask_id,
            _noise_generator(cfg.seed, step),
            eps=cfg.eps,
            weighting=cfg.weighting,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        state["tokens"] += int(batch.valid.sum())
        state["trainable_tokens"] += batch.num_trainable
        state["log"].append([step + 1, round(loss.item(), 5)])
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        done = step + 1
        if done % cfg.save_every == 0 or done == cfg.steps:
            save_checkpoint(
                out, done, model, tok, src.generation_config, optimizer, scheduler, state,
                cfg.keep_checkpoints,
            )  # fmt: skip
        if cfg.stop_after is not None and done >= cfg.stop_after and done < cfg.steps:
            raise TrainingInterrupted(f"stopped after step {done} (stop_after)")
    bar.close()

    model.eval()
    save_release(out, model, tok, src.generation_config)
    summary = {k: v for k, v in state.items() if k != "log"}
    summary.update(steps=cfg.steps, final_loss=state["log"][-1][1] if state["log"] else None)
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out

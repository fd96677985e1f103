"""LoRA fine-tuning of an SDAR checkpoint with the block-diffusion objective.

    python -m vllm_sdar.convert.lora --model SDAR_DIR --data train.jsonl --out ADAPTER \\
        --rank 8 --steps 600 --batch-size 64 --lr 3e-3
    vllm-sdar serve SDAR_DIR --enable-lora --max-lora-rank 8 --lora-modules name=ADAPTER

The base weights stay frozen; PEFT's LoRA layers are inserted into the
decoder layers' linear modules and trained with exactly the conversion's
loss (`objective.sdar_loss`: noisy + clean stream, block-diffusion mask,
masked-token cross-entropy), batches (`data.collate`) and determinism
(the batch and the noise of step s are functions of (seed, s); the LoRA
initialisation is drawn from the seed). The output is PEFT's own format
(adapter_config.json + adapter_model.safetensors), which vLLM loads as is.

`merge_adapter` writes base + adapter as one plain SDAR checkpoint
(W + (alpha / r) * B @ A per target module) without PEFT: what the
reference decoder runs to check the served adapter token for token.

PEFT is the optional `train` extra (`pip install 'vllm-sdar[train]'`); only
training imports it, never the serving path.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer

from vllm_sdar.algorithm.config import register_hf_configs, resolve_block_size, resolve_mask_id
from vllm_sdar.algorithm.hf_model import SDARForCausalLM, model_class_for
from vllm_sdar.convert.data import batch_order, collate, load_examples
from vllm_sdar.convert.objective import sdar_loss
from vllm_sdar.convert.train import (
    DTYPES,
    Optimization,
    _noise_generator,
    add_config_flags,
    lr_factor,
)

# Every linear layer of a decoder layer (attention and dense MLP), as PEFT
# names them; what vLLM's Qwen3 LoRA layers cover (qkv_proj / gate_up_proj
# are stacked from these on load).
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
SUMMARY_FILE = "lora_training.json"


@dataclass(frozen=True)
class LoraTrainConfig(Optimization):
    model: str  # SDAR checkpoint directory (HF format): the frozen base
    data: str  # JSONL training records (data.py formats)
    out: str  # the adapter directory (PEFT format)
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: str = ",".join(DEFAULT_TARGETS)  # comma-separated module names
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    base_name: str = ""  # base_model_name_or_path recorded in adapter_config.json

    def check(self) -> None:
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        super().check()
        if not self.target_list:
            raise ValueError("targets is empty")

    @property
    def target_list(self) -> list[str]:
        return [t.strip() for t in self.targets.split(",") if t.strip()]


def load_sdar(model_dir: str | Path, dtype: torch.dtype) -> tuple[SDARForCausalLM, Any, int, int]:
    """(model, tokenizer, block size, mask id) of an SDAR checkpoint."""
    register_hf_configs()
    config = AutoConfig.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = model_class_for(config).from_pretrained(model_dir, dtype=dtype)
    return model, tokenizer, resolve_block_size(config), resolve_mask_id(config, tokenizer)


def train_lora(cfg: LoraTrainConfig) -> Path:
    """Train a LoRA adapter on cfg.model with the SDAR objective; write it to cfg.out."""
    from peft import LoraConfig, get_peft_model  # the `train` extra

    cfg.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, tok, block_size, mask_id = load_sdar(cfg.model, DTYPES[cfg.dtype])
    fill_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else fill_id
    examples = load_examples(cfg.data, tok, cfg.max_length)

    torch.manual_seed(cfg.seed)  # PEFT draws lora_A from the global generator
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_list,
            bias="none",
        ),
    )
    # PEFT swapped the target modules in place: `model` now runs with LoRA,
    # and sdar_loss (which calls the decoder layers itself) sees it.
    model.to(cfg.device).train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio, cfg.schedule),
    )
    log: list[list[float]] = []
    tokens = 0
    bar = tqdm(range(cfg.steps), desc="sdar-lora", leave=False)
    for step in bar:
        idx = batch_order(len(examples), cfg.batch_size, step, cfg.seed)
        batch = collate([examples[i] for i in idx], block_size, fill_id, pad_id)
        loss = sdar_loss(
            model,
            batch,
            block_size,
            mask_id,
            _noise_generator(cfg.seed, step),
            eps=cfg.eps,
            weighting=cfg.weighting,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        tokens += int(batch.valid.sum())
        log.append([step + 1, round(loss.item(), 5)])
        bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()

    model.eval()
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    _tidy_adapter(out, cfg.base_name or str(cfg.model))
    summary = {
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("out",)},
        "trainable_parameters": sum(p.numel() for p in trainable),
        "tokens": tokens,
        "final_loss": log[-1][1] if log else None,
        "loss_every_50": [row for row in log if row[0] % 50 == 0],
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out


def random_adapter(
    model_dir: str | Path,
    out: str | Path,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    rank: int = 8,
    alpha: int = 16,
    seed: int = 0,
    std: float = 0.3,
) -> Path:
    """A random-weight PEFT adapter for tests (lora_B is not zero, so it
    changes outputs), written by PEFT itself like a trained one."""
    from peft import LoraConfig, get_peft_model  # the `train` extra

    model, _, _, _ = load_sdar(model_dir, torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero: a no-op adapter
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    out = Path(out)
    peft_model.save_pretrained(out, safe_serialization=True, save_embedding_layers=False)
    _tidy_adapter(out, str(model_dir))
    return out


def _tidy_adapter(out: Path, base_name: str) -> None:
    """Keep PEFT's two files, name the base model, drop the generated model card.

    The card is a template that records the local path of the base; the
    base name goes into adapter_config.json instead.
    """
    (out / "README.md").unlink(missing_ok=True)
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_name
    # PEFT writes a set (order varies per process): sorted, a rebuild is byte-identical.
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def adapter_deltas(adapter_dir: str | Path) -> dict[str, torch.Tensor]:
    """{base weight name: scale * B @ A} of a PEFT LoRA adapter (no PEFT needed)."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
        raise ValueError(f"{adapter_dir}: only plain LoRA adapters can be merged")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: rank_pattern / alpha_pattern are not supported")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    state = load_file(adapter_dir / "adapter_model.safetensors")
    deltas = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        deltas[f"{module}.weight"] = scale * (b.double() @ a.double())
    if not deltas:
        raise ValueError(f"{adapter_dir}: no lora_A/lora_B tensors")
    return deltas


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out: str | Path) -> Path:
    """base + adapter as one SDAR checkpoint directory (every non-weight file copied)."""
    base_dir, out = Path(base_dir), Path(out)
    shards = sorted(base_dir.glob("*.safetensors"))
    if len(shards) != 1:
        raise ValueError(f"{base_dir}: expected one model.safetensors, found {len(shards)}")
    state = load_file(shards[0])
    for name, delta in adapter_deltas(adapter_dir).items():
        if name not in state:
            raise ValueError(f"adapter targets {name}, which {base_dir} does not have")
        state[name] = (state[name].double() + delta).to(state[name].dtype)
    out.mkdir(parents=True, exist_ok=True)
    for path in base_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copyfile(path, out / path.name)
    save_file({k: v.contiguous() for k, v in state.items()}, out / shards[0].name,
              metadata={"format": "pt"})  # fmt: skip
    return out


HELP = {
    "model": "SDAR checkpoint directory (HF format), kept frozen",
    "data": "JSONL: {'messages': [...]}, {'prompt','completion'} or {'text'} per line",
    "out": "adapter directory (PEFT format: adapter_config.json + adapter_model.safetensors)",
    "targets": "comma-separated module names to adapt",
    "base_name": "base model name written into adapter_config.json (default: --model)",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vllm_sdar.convert.lora",
        description="LoRA fine-tuning of an SDAR model with the block-diffusion objective.",
    )
    add_config_flags(p, LoraTrainConfig, HELP)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(parser().parse_args(argv))
    threads = args.pop("threads")
    if threads:
        torch.set_num_threads(threads)
    cfg = LoraTrainConfig(**args)
    began = time.perf_counter()
    out = train_lora(cfg)
    print(f"wrote LoRA adapter (rank {cfg.rank}) to {out} in {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turn a Qwen3 (dense or MoE) causal-LM checkpoint into an untrained SDAR model.

SDAR is Qwen3 with a different attention mask and no logit shift, and
`vllm_sdar.algorithm.hf_model` uses the Qwen3 / Qwen3-MoE checkpoint names, so the
tensors are read straight from the source's safetensors files and move over
1:1 (loaded strictly: a renamed or missing tensor is an error, not a
silently random layer). Reading the files rather than a loaded
Qwen3MoeForCausalLM matters: transformers 5 fuses the experts in memory
(`experts.gate_up_proj`) while checkpoints keep one tensor per expert.
What changes:

- the config becomes an SDARConfig / SDARMoeConfig (model_type "sdar" /
  "sdar_moe") carrying block_size and mask_token_id, with the lm_head
  untied (SDAR's is; a tied source gets an lm_head copied from its
  embedding);
- the tokenizer gets `<|MASK|>` as its mask token if it has none; the mask
  id takes the tokenizer's next free id, and the embedding and lm_head grow
  only when that id is past the (often padded) vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, GenerationConfig

from vllm_sdar.algorithm.config import SDARConfig, SDARMoeConfig
from vllm_sdar.algorithm.hf_model import SDARForCausalLM, model_class_for

MASK_TOKEN = "<|MASK|>"
# New vocabulary rows are padded to a multiple of this (tensor-parallel
# sharding and GEMM kernels prefer round sizes; Qwen pads to 128 as well).
VOCAB_MULTIPLE = 8


@dataclass
class Converted:
    model: SDARForCausalLM
    tokenizer: Any
    generation_config: GenerationConfig
    mask_id: int


def add_mask_token(tokenizer: Any, mask_token: str = MASK_TOKEN) -> int:
    """The tokenizer's mask id, adding `mask_token` as its mask token if needed."""
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": mask_token})
    return int(tokenizer.mask_token_id)


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    # New rows start at the mean row: an embedding of typical scale for MASK,
    # and an lm_head row that gives MASK an average logit (it is never a
    # target, so training pushes it down from there).
    extra = weight.mean(0, keepdim=True).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra], 0)


# Source model_type -> (SDAR config class, architecture).
TARGETS: dict[str, tuple[type[SDARConfig], str]] = {
    "qwen3": (SDARConfig, "SDARForCausalLM"),
    "qwen3_moe": (SDARMoeConfig, "SDARMoeForCausalLM"),
}


def sdar_config_from_qwen3(
    qwen3_config: Any, block_size: int, mask_id: int
) -> SDARConfig | SDARMoeConfig:
    config_cls, architecture = TARGETS[qwen3_config.model_type]
    fields = qwen3_config.to_dict()
    for key in ("model_type", "architectures", "auto_map", "transformers_version"):
        fields.pop(key, None)
    fields.update(
        block_size=block_size,
        mask_token_id=mask_id,
        tie_word_embeddings=False,
        vocab_size=max(
            qwen3_config.vocab_size, -(-(mask_id + 1) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        ),
    )
    config = config_cls(**fields)
    config.architectures = [architecture]
    return config


def load_generation_config(model_dir: str | Path, config: Any, tokenizer: Any) -> GenerationConfig:
    """The source's generation config, with the tokenizer's EOS among the stop ids."""
    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    eos = gen.eos_token_id
    eos = [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    gen.eos_token_id = eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return gen


def checkpoint_tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors files (one or sharded)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir}: no *.safetensors files")
    state: dict[str, torch.Tensor] = {}
    for shard in files:
        state.update(load_file(shard))
    return state


def from_qwen3(
    model_dir: str | Path,
    block_size: int,
    mask_token: str = MASK_TOKEN,
    dtype: torch.dtype = torch.float32,
) -> Converted:
    """Load a Qwen3 / Qwen3-MoE checkpoint as an SDAR model (same weights)."""
    source_config = AutoConfig.from_pretrained(model_dir)
    if source_config.model_type not in TARGETS:
        raise ValueError(
            f"{model_dir}: expected a Qwen3 causal LM (model_type {' or '.join(TARGETS)}), "
            f"got {source_config.model_type!r}"
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    mask_id = add_mask_token(tokenizer, mask_token)
    state = checkpoint_tensors(model_dir)
    if "lm_head.weight" not in state or source_config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    state = {k: v.to(dtype) for k, v in state.items()}

    config = sdar_config_from_qwen3(source_config, block_size, mask_id)
    config.dtype = dtype
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if state[key].shape[0] < config.vocab_size:
            state[key] = _grow_rows(state[key], config.vocab_size)
    model = model_class_for(config)(config).to(dtype)
    model.load_state_dict(state, strict=True)
    generation_config = load_generation_config(model_dir, source_config, tokenizer)
    return Converted(model, tokenizer, generation_config, mask_id)

"""Pure-PyTorch SDAR networks (dense and MoE) on transformers' Qwen3 modules.

Parameter names are the released checkpoints' names (Qwen3 / Qwen3-MoE with
per-expert `mlp.experts.{e}.*_proj` and router `mlp.gate`). The only change
from Qwen3 is the attention mask: callers pass block-causal masks, built by
`vllm_sdar.algorithm.decoding.block_causal_mask`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3DecoderLayer,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeMLP

from vllm_sdar.algorithm.config import SDARConfig, SDARMoeConfig
from vllm_sdar.algorithm.decoding import block_causal_mask


class SdarSparseMoe(nn.Module):
    """Qwen3-MoE's sparse block with one module per expert (checkpoint names)."""

    def __init__(self, config: SDARMoeConfig) -> None:
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            Qwen3MoeMLP(config, intermediate_size=config.moe_intermediate_size)
            for _ in range(config.num_experts)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        flat = hidden.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(flat), dim=-1, dtype=torch.float)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(flat.dtype)
        out = torch.zeros_like(flat)
        for e in experts.unique().tolist():
            rows, slot = torch.nonzero(experts == e, as_tuple=True)
            out.index_add_(0, rows, self.experts[e](flat[rows]) * weights[rows, slot, None])
        return out.reshape(shape)


def _is_sparse_layer(config: SDARMoeConfig, layer_idx: int) -> bool:
    return (
        layer_idx not in (config.mlp_only_layers or [])
        and config.num_experts > 0
        and (layer_idx + 1) % config.decoder_sparse_step == 0
    )


class SdarModel(nn.Module):
    """Embeddings + Qwen3 decoder layers + final norm (the `model.` prefix)."""

    def __init__(self, config: SDARConfig | SDARMoeConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Qwen3DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        if isinstance(config, SDARMoeConfig):
            for i, layer in enumerate(self.layers):
                if _is_sparse_layer(config, i):
                    layer.mlp = SdarSparseMoe(config)
        self.norm = Qwen3RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen3RotaryEmbedding(config=config)

    def forward(
        self,
        input_ids: torch.Tensor,
        start: int,
        cache: Cache | None,
        block_size: int,
    ) -> torch.Tensor:
        """Hidden states for `input_ids` [1, L] placed at positions start..start+L.

        Keys are the cache's first `start` positions plus these L tokens; the
        new KV is appended to `cache` (callers crop it to forget).
        """
        length = input_ids.shape[1]
        positions = torch.arange(start, start + length, device=input_ids.device)[None]
        mask = block_causal_mask(start, length, start + length, block_size, input_ids.device)
        hidden = self.embed_tokens(input_ids)
        rope = self.rotary_emb(hidden, positions)
        for layer in self.layers:
            hidden = layer(
                hidden,
                attention_mask=mask[None, None],
                position_ids=positions,
                past_key_values=cache,
                use_cache=cache is not None,
                position_embeddings=rope,
            )
        return self.norm(hidden)


class SDARForCausalLM(PreTrainedModel):
    """SDAR network; `lm_head` is untied, logits are not shifted."""

    config_class = SDARConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen3DecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config: SDARConfig | SDARMoeConfig) -> None:
        config._attn_implementation = "sdpa"
        super().__init__(config)
        self.model = SdarModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        start: int = 0,
        cache: Cache | None = None,
        block_size: int = 4,
    ) -> torch.Tensor:
        return self.lm_head(self.model(input_ids, start, cache, block_size))


class SDARMoeForCausalLM(SDARForCausalLM):
    config_class = SDARMoeConfig


def model_class_for(config: SDARConfig | SDARMoeConfig) -> type[SDARForCausalLM]:
    return SDARMoeForCausalLM if isinstance(config, SDARMoeConfig) else SDARForCausalLM

"""SDAR networks in vLLM: Qwen3 / Qwen3-MoE with nothing changed.

The weights, layers and weight loading are exactly Qwen3's; what makes SDAR
different (block-causal attention, no logit shift, unmasking) lives in the
SDAR scheduler and the worker half: on Model Runner V2 the model state
these classes name (`get_model_state_cls`, vLLM's hook for models whose
step is not next-token decoding), on the V1 runner the SDAR runner
(engine/runner.py, which never asks). Distinct classes give the registry
SDAR's architecture names.
"""

from __future__ import annotations

from vllm.model_executor.models.interfaces import SupportsLoRA
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM


def _copy(mapping: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: list(parts) for name, parts in mapping.items()}


class _SdarModelState:
    @classmethod
    def get_model_state_cls(cls) -> type:
        # Imported on demand: the MRV2 modules need Triton.
        from vllm_sdar.engine.model_state import SdarModelState

        return SdarModelState


# LoRA is declared as vLLM's Qwen3 / Qwen3-MoE declare it (SupportsLoRA, the
# stacked-module mapping, the embedding modules), on copies of their
# mappings: Qwen3MoeForCausalLM.__init__ adds "gate_up_proj" to
# `self.packed_modules_mapping` in place, which would otherwise edit vLLM's
# class attribute. How an SDAR step maps lm_head rows to adapters:
# vllm_sdar/engine/lora.py.
class SDARForCausalLM(_SdarModelState, Qwen3ForCausalLM, SupportsLoRA):
    packed_modules_mapping = _copy(Qwen3ForCausalLM.packed_modules_mapping)
    embedding_modules = dict(Qwen3ForCausalLM.embedding_modules)


class SDARMoeForCausalLM(_SdarModelState, Qwen3MoeForCausalLM, SupportsLoRA):
    packed_modules_mapping = _copy(Qwen3MoeForCausalLM.packed_modules_mapping)
    embedding_modules = dict(Qwen3MoeForCausalLM.embedding_modules)

"""SDAR networks in vLLM: Qwen3 / Qwen3-MoE with nothing changed.

The weights, layers and weight loading are exactly Qwen3's; what makes SDAR
different (block-causal attention, no logit shift, unmasking) lives in the
SDAR runner and scheduler, which the plugin selects for these
architectures. Distinct classes give the registry SDAR's architecture names.
"""

from __future__ import annotations

from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.qwen3_moe import Qwen3MoeForCausalLM


class SDARForCausalLM(Qwen3ForCausalLM):
    pass


class SDARMoeForCausalLM(Qwen3MoeForCausalLM):
    pass

"""What SDAR refuses at start-up: everything it does not support or never ran.

Called from the config hook (`engine_setup.configure`) for SDAR models only,
before the engine allocates anything. Each refusal is one line naming the
option the user set, so `vllm serve` stops with a readable error instead of
serving wrong tokens or failing mid-request.
"""

from __future__ import annotations

import os
from typing import Any

SUPPORTED_VLLM = "0.32."


class SdarUnsupportedError(ValueError):
    """A start-up option SDAR does not support (one line, naming it)."""

    def __init__(self, option: str, why: str) -> None:
        super().__init__(f"vllm-sdar: {option} is not supported with SDAR models ({why})")
        self.option = option


def check_vllm_version(version: str) -> None:
    if not version.startswith(SUPPORTED_VLLM):
        raise SdarUnsupportedError(
            f"vLLM {version}",
            f"the plugin replaces vLLM {SUPPORTED_VLLM}x internals; install vllm==0.32.*",
        )


def _attention_backend(vllm_config: Any) -> tuple[str, Any] | None:
    """(name, backend class or None) of a user-chosen attention backend."""
    backend = getattr(vllm_config.attention_config, "backend", None)
    if backend is None:
        return None
    try:
        return backend.name, backend.get_class()
    except Exception:  # its kernels are not installed here: nothing to ask
        return backend.name, None


def check_attention_backend(name: str, backend_cls: Any) -> None:
    """The block-causal split needs non-causal virtual requests (attention.py).

    FlashInfer is refused by name: besides reporting no non-causal support,
    it sizes persistent buffers by max_num_seqs, which the virtual requests
    exceed.
    """
    if "FLASHINFER" in name or backend_cls is None or not backend_cls.supports_non_causal():
        raise SdarUnsupportedError(
            f"--attention-backend {name}",
            "SDAR's block-causal attention needs a backend whose supports_non_causal() is "
            "true: CPU_ATTN, FLASH_ATTN or TRITON_ATTN",
        )


def _moe_on_cpu(vllm_config: Any) -> bool:
    from vllm.platforms import current_platform

    hf_config = vllm_config.model_config.hf_config
    return current_platform.is_cpu() and bool(getattr(hf_config, "num_experts", 0))


def refuse_unsupported(vllm_config: Any, block_size: int, steps_per_iteration: int = 1) -> None:
    """Raise SdarUnsupportedError for the first unsupported option set."""
    import vllm

    check_vllm_version(vllm.__version__)
    parallel = vllm_config.parallel_config
    model = vllm_config.model_config
    checks = [
        (
            parallel.pipeline_parallel_size > 1,
            "--pipeline-parallel-size",
            "tensor parallelism is supported, pipeline parallelism is not",
        ),
        (
            vllm_config.speculative_config is not None,
            "--speculative-config",
            "SDAR already drafts a whole block per forward",
        ),
        (
            vllm_config.lora_config is not None and _moe_on_cpu(vllm_config),
            "--enable-lora with an MoE model on CPU",
            "with any LoRA config vLLM 0.32 gives every MoE layer a LoRA-capable experts "
            "kernel, and the only one is Triton's (fused_moe/experts/triton_moe.py), which "
            "has no CPU backend: even base-model requests fail; dense SDAR models take "
            "LoRA on CPU",
        ),
        (
            bool(getattr(model, "enable_prompt_embeds", False)),
            "--enable-prompt-embeds",
            "the scheduler feeds token ids for every position",
        ),
        (
            vllm_config.kv_transfer_config is not None,
            "--kv-transfer-config (KV connectors / disaggregated prefill)",
            "an open block's KV is rewritten every step and never final until committed",
        ),
        (
            getattr(parallel, "decode_context_parallel_size", 1) > 1,
            "--decode-context-parallel-size",
            "never implemented or tested",
        ),
        (
            getattr(parallel, "prefill_context_parallel_size", 1) > 1,
            "--prefill-context-parallel-size",
            "never implemented or tested",
        ),
        (
            os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").strip().lower() in ("1", "true"),
            "VLLM_USE_V2_MODEL_RUNNER=1",
            "the SDAR runner extends vLLM's V1 model runner",
        ),
        (
            str(getattr(vllm_config.scheduler_config, "policy", "fcfs")) == "priority",
            "--scheduling-policy priority",
            "the SDAR scheduler admits and preempts first-come-first-served only",
        ),
        (
            steps_per_iteration > 1 and parallel.tensor_parallel_size > 1,
            "steps_per_iteration > 1 with --tensor-parallel-size > 1",
            "the inner steps unmask on the driver rank, whose logits the other ranks do "
            "not hold; each iteration is one step under tensor parallelism",
        ),
        (
            steps_per_iteration > 1 and vllm_config.lora_config is not None,
            "steps_per_iteration > 1 with --enable-lora",
            "vLLM maps lm_head rows to adapters once per iteration, before the inner steps "
            "choose their rows",
        ),
    ]
    for failed, option, why in checks:
        if failed:
            raise SdarUnsupportedError(option, why)
    chosen = _attention_backend(vllm_config)
    if chosen is not None:
        check_attention_backend(*chosen)
    page = vllm_config.cache_config.block_size
    if page is not None and page % block_size:
        raise SdarUnsupportedError(
            f"--block-size {page}",
            f"KV cache pages must be a multiple of the SDAR block size {block_size}",
        )

"""What SDAR refuses at start-up: everything it does not support or never ran.

Called from the config hook (`engine_setup.configure`) for SDAR models only,
before the engine allocates anything. Each refusal is one line naming the
option the user set, so `vllm serve` stops with a readable error instead of
serving wrong tokens or failing mid-request.
"""

from __future__ import annotations

from typing import Any

from vllm_sdar.engine.vllm_compat import SUPPORTED_MINORS


class SdarUnsupportedError(ValueError):
    """A start-up option SDAR does not support (one line, naming it)."""

    def __init__(self, option: str, why: str) -> None:
        super().__init__(f"vllm-sdar: {option} is not supported with SDAR models ({why})")
        self.option = option


def check_vllm_version(version: str) -> None:
    if ".".join(version.split(".")[:2]) not in SUPPORTED_MINORS:
        raise SdarUnsupportedError(
            f"vLLM {version}",
            f"the plugin touches vLLM internals checked on {', '.join(SUPPORTED_MINORS)} "
            "(python -m vllm_sdar.tools.compat); install vllm>=0.32,<0.35",
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


def user_chose_page(cache_config: Any) -> bool:
    # vLLM fills its default page size before the config hook runs (0.32:
    # 16) and records whether the user set one.
    return bool(getattr(cache_config, "user_specified_block_size", cache_config.block_size))


def _triton_missing() -> bool:
    from vllm.triton_utils import HAS_TRITON

    return not HAS_TRITON


def _lora_maps_logits_rows() -> bool:
    """Whether MRV2 maps lm_head rows to LoRA adapters per logits row (0.34:
    `LoraState.make_lora_inputs` takes the rows) or per request (0.32, 0.33)."""
    import inspect

    from vllm.v1.worker.gpu.lora_utils import LoraState

    return len(inspect.signature(LoraState.make_lora_inputs).parameters) > 4


def refuse_unsupported(
    vllm_config: Any, block_size: int, steps_per_iteration: int = 1, runner_v2: bool = False
) -> None:
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
            runner_v2 and _triton_missing(),
            "Model Runner V2 (VLLM_USE_V2_MODEL_RUNNER=1) without Triton",
            "its input and bookkeeping kernels are Triton kernels and this Triton has no "
            "backend for the device (on CPUs: triton-cpu); unset VLLM_USE_V2_MODEL_RUNNER "
            "to use the V1 runner",
        ),
        (
            runner_v2 and steps_per_iteration > 1,
            "steps_per_iteration > 1 on Model Runner V2",
            "the inner denoising steps re-run the forward inside the V1 runner's "
            "_model_forward; MRV2 runs one denoising step per engine iteration",
        ),
        (
            runner_v2 and vllm_config.lora_config is not None and not _lora_maps_logits_rows(),
            "--enable-lora on Model Runner V2 with this vLLM",
            "vLLM < 0.34's MRV2 maps lm_head rows to adapters one per request, and an SDAR "
            "step takes one row per masked slot; use the V1 runner "
            "(VLLM_USE_V2_MODEL_RUNNER=0) or vLLM 0.34",
        ),
        (
            runner_v2
            and bool(getattr(vllm_config.parallel_config, "enable_batch_sharded_sampling", False)),
            "--enable-batch-sharded-sampling",
            "each SDAR step unmasks every block on every rank",
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
            (budget := vllm_config.scheduler_config.max_num_batched_tokens) is not None
            and budget < 2 * block_size,
            f"--max-num-batched-tokens {budget}",
            f"a commit plus the next block must fit in one step: at least twice the SDAR "
            f"block size ({2 * block_size})",
        ),
        (
            parallel.data_parallel_size > 1 and _moe_on_cpu(vllm_config),
            "--data-parallel-size > 1 with an MoE model on CPU",
            "vLLM 0.32's CPU communicator lacks all_gatherv, which every MoE layer calls "
            "under DP; use tensor parallelism",
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
    if user_chose_page(vllm_config.cache_config) and page % block_size:
        raise SdarUnsupportedError(
            f"--block-size {page}",
            f"KV cache pages must be a multiple of the SDAR block size {block_size}",
        )

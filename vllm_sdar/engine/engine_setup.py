"""Selects everything SDAR needs when (and only when) the model is SDAR.

Hooked into vLLM's per-architecture config hook table (`MODELS_CONFIG_MAP`,
consulted by `VllmConfig.try_verify_and_update_config` before the platform
fills its defaults), so users pass no `--scheduler-cls` / `--worker-cls`,
and other models served beside the plugin are untouched.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from vllm_sdar.algorithm.config import ARCHITECTURES, SdarDeployment, block_size_from_name
from vllm_sdar.engine.vllm_compat import uses_model_runner_v2

# Under vLLM's "vllm" logger so lines reach vLLM's handler and level (a
# plain module logger has no handler and INFO would be dropped).
logger = logging.getLogger("vllm." + __name__)

SCHEDULER = "vllm_sdar.engine.scheduler.SdarScheduler"
CPU_WORKER = "vllm_sdar.engine.worker.SdarCPUWorker"
GPU_WORKER = "vllm_sdar.engine.worker.SdarGPUWorker"
# The front end validates requests through the logits-processor interface
# of the runner vLLM runs.
VALIDATOR_V1 = "vllm_sdar.serving.validator_v1:SdarRequestValidator"
VALIDATOR_V2 = "vllm_sdar.serving.validator_v2:SdarRequestValidatorV2"
CPU_PAGE = 128  # vLLM's CPU default KV page
GPU_PAGE = 16  # vLLM's CUDA default KV page


# The SDAR model this process serves, once `configure` ran here: what the
# front end's request checks (serving/validation.py) read; they are called
# without a config (vLLM's logits-processor validator interface).
_deployment: SdarDeployment | None = None


def current_deployment() -> SdarDeployment | None:
    return _deployment


def _load_tokenizer(model_config: Any) -> Any:
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            model_config.tokenizer, revision=model_config.tokenizer_revision
        )
    except Exception:  # the tokenizer is only a fallback source for the mask id
        return None


def configure(vllm_config: Any) -> SdarDeployment:
    """Every SDAR choice, in order: resolve the deployment, fit and check the
    options, pick the SDAR classes, round max_model_len to whole blocks."""
    from vllm.platforms import current_platform

    from vllm_sdar.engine.support import refuse_unsupported

    deployment = resolve_deployment(vllm_config.model_config)
    runner_v2 = uses_model_runner_v2(vllm_config)
    on_cpu = current_platform.is_cpu()
    fit_kv_pages(vllm_config.cache_config, deployment.block_size, on_cpu)
    refuse_unsupported(
        vllm_config, deployment.block_size, deployment.steps_per_iteration, runner_v2
    )
    _choose_classes(vllm_config, on_cpu, runner_v2)
    _whole_blocks_only(vllm_config.model_config, deployment.block_size)
    logger.info(
        "SDAR: block size %d, mask id %d, default strategy %s, %d denoising step(s) per "
        "engine iteration, %s",
        deployment.block_size,
        deployment.mask_id,
        deployment.defaults.remasking_strategy,
        deployment.steps_per_iteration,
        "Model Runner V2" if runner_v2 else "the V1 model runner",
    )
    return deployment


def resolve_deployment(model_config: Any) -> SdarDeployment:
    """Block size, mask id and option defaults, resolved once and written back
    into hf_config, which travels to the engine and every worker."""
    global _deployment
    hf_config = model_config.hf_config
    tokenizer = None
    if getattr(hf_config, "mask_token_id", None) is None:
        tokenizer = _load_tokenizer(model_config)
    if getattr(hf_config, "block_size", None) is None:
        # Hub configs may lack block_size; -b8/-b16/-b64 releases say it in
        # their name. An explicit --hf-overrides block_size still wins.
        named = block_size_from_name(model_config.model) or block_size_from_name(
            str(model_config.served_model_name)
        )
        if named is not None:
            hf_config.block_size = named
    deployment = SdarDeployment.from_hf_config(hf_config, tokenizer)
    hf_config.block_size = deployment.block_size
    hf_config.mask_token_id = deployment.mask_id
    _deployment = deployment
    return deployment


def _choose_classes(vllm_config: Any, on_cpu: bool, runner_v2: bool) -> None:
    """The SDAR scheduler, worker and request validator, unless the user chose."""
    scheduler_config = vllm_config.scheduler_config
    if scheduler_config.scheduler_cls is None:
        scheduler_config.scheduler_cls = SCHEDULER
    # One step's output decides the next step's input: no overlap possible.
    scheduler_config.async_scheduling = False

    parallel_config = vllm_config.parallel_config
    engine_in_child = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"
    if on_cpu and engine_in_child and parallel_config.distributed_executor_backend == "ray":
        from vllm_sdar.engine.ray_cpu import share_driver_cluster

        share_driver_cluster()
    if parallel_config.worker_cls == "auto":
        parallel_config.worker_cls = CPU_WORKER if on_cpu else GPU_WORKER
    if not on_cpu:
        # Full CUDA graphs would replay attention metadata captured for a
        # different block-causal split (and, on MRV2, other logits rows).
        from vllm.config import CUDAGraphMode

        vllm_config.compilation_config.cudagraph_mode = CUDAGraphMode.PIECEWISE
    model_config = vllm_config.model_config
    validator = VALIDATOR_V2 if runner_v2 else VALIDATOR_V1
    processors = [
        p for p in model_config.logits_processors or [] if p not in (VALIDATOR_V1, VALIDATOR_V2)
    ]
    model_config.logits_processors = processors + [validator]


def _whole_blocks_only(model_config: Any, B: int) -> None:
    # Positions past the last whole block could only hold a partial block,
    # which SDAR never decodes (the open block would run past the per-request
    # token buffers). Rounding down lets vLLM's own admission check reject a
    # prompt whose first block does not fit, instead of the engine failing.
    whole_blocks = model_config.max_model_len // B * B
    if whole_blocks < B:
        raise ValueError(
            f"max_model_len {model_config.max_model_len} is below one SDAR block ({B})"
        )
    if whole_blocks != model_config.max_model_len:
        logger.info(
            "SDAR: max_model_len %d rounded down to %d, a multiple of the block size %d",
            model_config.max_model_len,
            whole_blocks,
            B,
        )
        model_config.max_model_len = whole_blocks


def fit_kv_pages(cache_config: Any, block_size: int, on_cpu: bool) -> None:
    """KV pages must hold whole SDAR blocks: prefix-cache hits end on page
    boundaries and must end on block boundaries.

    A page size the user chose is checked (support.py refuses a bad one); a
    default one is the platform's: the CPU platform sets 128 after this hook
    (every B of 4-64 divides it), the GPU keeps vLLM's default (16 in 0.32,
    64 in 0.34), raised to a multiple of B and then kept as if chosen.
    """
    from vllm_sdar.engine.support import user_chose_page

    if user_chose_page(cache_config):
        return
    page = CPU_PAGE if on_cpu else (cache_config.block_size or GPU_PAGE)
    if page % block_size:
        cache_config.block_size = math.lcm(page, block_size)
        if hasattr(cache_config, "user_specified_block_size"):
            cache_config.user_specified_block_size = True


def register_config_hook() -> None:
    """Add SDAR architectures to vLLM's config hook table (idempotent)."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    class SdarConfigHook(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_config(vllm_config: Any) -> None:
            configure(vllm_config)

    for arch in ARCHITECTURES:
        if getattr(MODELS_CONFIG_MAP.get(arch), "__name__", None) != "SdarConfigHook":
            MODELS_CONFIG_MAP[arch] = SdarConfigHook

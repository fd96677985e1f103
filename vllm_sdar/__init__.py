"""vllm-sdar: serve SDAR block-diffusion models with vLLM."""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """The `vllm.general_plugins` entry point.

    vLLM calls it in every process it starts (API server, engine core,
    workers), possibly more than once: it only registers, idempotently,
    cheaply, and without touching CUDA.
    """
    from vllm_sdar.config import register_hf_configs

    register_hf_configs()

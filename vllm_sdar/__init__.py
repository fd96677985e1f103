"""vllm-sdar: serve SDAR block-diffusion models with vLLM."""

from __future__ import annotations

__version__ = "0.1.0"


def register() -> None:
    """The `vllm.general_plugins` entry point.

    vLLM calls it in every process it starts (API server, engine core,
    workers), possibly more than once: it only registers, idempotently,
    cheaply, and without touching CUDA.
    """
    import multiprocessing

    from vllm import ModelRegistry

    from vllm_sdar.algorithm.config import register_hf_configs
    from vllm_sdar.engine.engine_setup import register_config_hook
    from vllm_sdar.engine.orphan import exit_with_parent
    from vllm_sdar.serving.names import (
        check_serve_command,
        install_config_lookup_redirect,
        install_offline_path_redirect,
        install_redirects,
    )
    from vllm_sdar.serving.validation import install_validation_error_passthrough

    register_hf_configs()
    install_redirects()
    install_config_lookup_redirect()
    install_offline_path_redirect()
    check_serve_command()
    from vllm_sdar.serving.request_fields import is_front_end

    if is_front_end(multiprocessing.current_process().name):
        # Only front ends build OpenAI requests; workers skip the import.
        from vllm_sdar.serving.lifecycle import end_requests_on_shutdown
        from vllm_sdar.serving.metrics import install_response_terms
        from vllm_sdar.serving.request_fields import (
            guard_model_endpoints,
            harden_request_validators,
            install_request_fields,
        )

        install_request_fields()
        install_response_terms()
        harden_request_validators()
        end_requests_on_shutdown()
        guard_model_endpoints()
    supported = set(ModelRegistry.get_supported_archs())
    for arch in ("SDARForCausalLM", "SDARMoeForCausalLM"):
        if arch not in supported:
            ModelRegistry.register_model(arch, f"vllm_sdar.engine.models:{arch}")
    register_config_hook()
    install_validation_error_passthrough()
    from vllm_sdar.serving.structured_fields import install_structured_output_field_names

    install_structured_output_field_names()
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # vLLM's Ray executor on CPU (patches/README.md §16), applied only
        # when vLLM imports it: Ray is an optional extra.
        from vllm_sdar.engine.ray_cpu import arm

        arm()
    exit_with_parent()  # engine processes only: they must not outlive their parent

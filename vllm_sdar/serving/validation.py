"""Per-request validation at admission (front-end process), before the engine.

vLLM runs every configured logits processor's `validate_params` on each
request in the front end (`InputProcessor`): offline `generate()` raises
the error (here an `SdarOptionError`, a ValueError naming the parameter),
the OpenAI server answers HTTP 400. The plugin adds `SdarRequestValidator`
to the model's logits processors for SDAR models; it never touches logits
(the SDAR runner does not run vLLM's sampler).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from vllm_sdar.algorithm.config import SdarDeployment, SdarOptions

# Set in each process that builds an SDAR engine config (engine_setup), so
# the class-level hook can check block-size-dependent limits.
_deployment: SdarDeployment | None = None


def set_deployment(deployment: SdarDeployment) -> None:
    global _deployment
    _deployment = deployment


class SdarOptionError(VLLMValidationError, ValueError):
    """A bad SDAR request option, naming the parameter (`.parameter`).

    A ValueError, as offline users expect of bad input, and a
    VLLMValidationError, which vLLM 0.32 raises for every invalid sampling
    parameter (e.g. temperature=-1) and its server answers with HTTP 400
    naming the parameter.
    """


def current_deployment() -> SdarDeployment | None:
    """The SDAR model this process serves, once the config hook ran here."""
    return _deployment


def install_validation_error_passthrough() -> None:
    """Let an SdarOptionError leave the validate_params hook unchanged.

    vLLM re-wraps any ValueError raised by a logits processor's
    `validate_params` into a bare VLLMValidationError (for legacy
    processors), which would drop the ValueError class and `.parameter`.
    This re-raises the original when it already was a VLLMValidationError.
    Patch 12 in patches/README.md. The front end binds the function when
    its InputProcessor is built, after plugins load, so the module
    attribute is the one place to wrap. Idempotent.
    """
    from vllm.v1.sample import logits_processor

    original = logits_processor.validate_logits_processors_parameters
    if getattr(original, "_sdar_passthrough", False):
        return

    def validate(logits_processors: Any, sampling_params: SamplingParams) -> None:
        try:
            original(logits_processors, sampling_params)
        except VLLMValidationError as err:
            if isinstance(err.__cause__, VLLMValidationError):
                raise err.__cause__ from None
            raise

    validate._sdar_passthrough = True  # type: ignore[attr-defined]
    logits_processor.validate_logits_processors_parameters = validate


def _reject(parameter: str, message: str) -> None:
    raise SdarOptionError(message, parameter=parameter)


def validate_request(params: SamplingParams, deployment: SdarDeployment | None) -> SdarOptions:
    """Raise SdarOptionError naming the parameter; return the parsed options."""
    extra = params.extra_args or {}
    try:
        if deployment is not None:
            options = deployment.options_for(extra)
        else:
            options = SdarOptions.parse(extra)
    except ValueError as err:
        name = next((k for k in SdarOptions.KEYS if k in str(err)), "extra_args")
        _reject(name, str(err))
    if params.prompt_logprobs is not None:
        _reject(
            "prompt_logprobs",
            "prompt_logprobs are not supported with SDAR block diffusion: the model has no "
            "next-token distribution at prompt positions (its logits at a position predict "
            "that position's masked token, and prompt positions are never masked)",
        )
    if getattr(params, "logprob_token_ids", None):
        _reject(
            "logprob_token_ids", "logprob_token_ids are not supported with SDAR block diffusion"
        )
    return options


class SdarRequestValidator(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_request(sampling_params, _deployment)

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        pass

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        pass

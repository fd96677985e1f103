"""Per-request validation at admission (front-end process), before the engine.

vLLM runs every configured logits processor's `validate_params` on each
request in the front end (`InputProcessor`): offline `generate()` raises
the error (here an `SdarOptionError`, a ValueError naming the parameter),
the OpenAI server answers HTTP 400. The plugin adds a validator to the
model's logits processors for SDAR models, in the interface of the runner
vLLM runs (`validator_v1.py`, `validator_v2.py`); it never touches logits
(SDAR's step does not run vLLM's sampler).
"""

from __future__ import annotations

import functools
from typing import Any

from vllm.exceptions import VLLMValidationError
from vllm.sampling_params import SamplingParams

from vllm_sdar.algorithm.config import SdarDeployment, SdarOptions
from vllm_sdar.engine.engine_setup import current_deployment

__all__ = ["SdarOptionError", "current_deployment", "validate_request"]


class SdarOptionError(VLLMValidationError, ValueError):
    """A bad SDAR request option, naming the parameter (`.parameter`).

    A ValueError, as offline users expect of bad input, and a
    VLLMValidationError, which vLLM 0.32 raises for every invalid sampling
    parameter (e.g. temperature=-1) and its server answers with HTTP 400
    naming the parameter.
    """


def _passthrough(validate: Any) -> Any:
    """`validate` with an SdarOptionError let out unchanged.

    vLLM re-wraps any ValueError raised by a logits processor's
    `validate_params` into a bare VLLMValidationError, which would drop the
    ValueError class and `.parameter`; this re-raises the original when it
    already was a VLLMValidationError.
    """
    if getattr(validate, "_sdar_passthrough", False):
        return validate

    @functools.wraps(validate)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            validate(*args, **kwargs)
        except VLLMValidationError as err:
            if isinstance(err.__cause__, VLLMValidationError):
                raise err.__cause__ from None
            raise

    wrapper._sdar_passthrough = True  # type: ignore[attr-defined]
    return wrapper


def install_validation_error_passthrough() -> None:
    """Let an SdarOptionError leave the validate_params hook unchanged, on
    whichever runner's path the front end takes (patch 12 in
    patches/README.md). The front end looks the functions up when its
    InputProcessor is built, after plugins load, so the module attributes
    are the one place to wrap. Idempotent.

    - V1 runner (vLLM <= 0.33): `validate_logits_processors_parameters`;
    - Model Runner V2: the validator `build_custom_logits_processors_params_validator`
      returns.
    """
    try:  # the V1 package is gone from vLLM 0.34
        from vllm.v1.sample import logits_processor as v1
    except ImportError:
        v1 = None
    if v1 is not None and hasattr(v1, "validate_logits_processors_parameters"):
        v1.validate_logits_processors_parameters = _passthrough(
            v1.validate_logits_processors_parameters
        )
    from vllm.v1.worker.gpu.sample import logits_processor as v2

    build = v2.build_custom_logits_processors_params_validator
    if not getattr(build, "_sdar_passthrough", False):

        @functools.wraps(build)
        def build_passthrough(*args: Any, **kwargs: Any) -> Any:
            return _passthrough(build(*args, **kwargs))

        build_passthrough._sdar_passthrough = True  # type: ignore[attr-defined]
        v2.build_custom_logits_processors_params_validator = build_passthrough


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

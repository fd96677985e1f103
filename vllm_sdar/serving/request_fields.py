"""OpenAI server: SDAR options as top-level request fields (`extra_body`).

vLLM's request models accept unknown fields (`extra="allow"`) but drop
them; only `vllm_xargs` reaches `SamplingParams.extra_args`. This wraps
`to_sampling_params` of the completion and chat request models so that
`{"denoising_steps": 2, ...}` works like `{"vllm_xargs": {"denoising_steps": 2}}`.
Validation stays in `vllm_sdar.serving.validation` (HTTP 400 naming the field).
"""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import Any

from vllm_sdar.algorithm.config import SdarOptions


def _with_sdar_fields(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def to_sampling_params(self: Any, *args: Any, **kwargs: Any) -> Any:
        params = original(self, *args, **kwargs)
        extra = {k: v for k, v in (self.model_extra or {}).items() if k in SdarOptions.KEYS}
        if extra:
            params.extra_args = {**(params.extra_args or {}), **extra}
        return params

    to_sampling_params._sdar_wrapped = True  # type: ignore[attr-defined]
    return to_sampling_params


def is_front_end(process_name: str) -> bool:
    """Whether this process may build OpenAI requests.

    `vllm serve` runs its front end in the main process, or, with
    `--api-server-count N`, in N children named "ApiServer_<i>" (vLLM 0.32,
    v1/utils.py); any process that imported the OpenAI server counts too.
    Engine cores and workers never parse requests.
    """
    return (
        process_name == "MainProcess"
        or process_name.startswith("ApiServer")
        or "vllm.entrypoints.openai.api_server" in sys.modules
    )


def install_request_fields() -> None:
    """Wrap the request models once per process."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    for model in (CompletionRequest, ChatCompletionRequest):
        if not getattr(model.to_sampling_params, "_sdar_wrapped", False):
            model.to_sampling_params = _with_sdar_fields(model.to_sampling_params)


# Paths vLLM 0.32 serves outside its API-key prefixes (/v1, /v2, /inference,
# /cohere) that still run the model, read its tokenizer or change the engine:
# with --api-key, `POST /invocations` (SageMaker) answered completions to
# anyone. Health, metrics, version, load and the docs stay open.
EXTRA_GUARDED_PREFIXES = (
    "/invocations",
    "/generative_scoring",
    "/tokenize",
    "/detokenize",
    "/pooling",
    "/classify",
    "/score",
    "/rerank",
    "/scale_elastic_ep",
    "/is_scaling_elastic_ep",
    "/start_profile",
    "/stop_profile",
    "/reset_prefix_cache",
    "/reset_mm_cache",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
)


def guard_model_endpoints() -> None:
    """Put every model-reaching path behind --api-key (idempotent; read per
    request by vLLM's AuthenticationMiddleware)."""
    from vllm.entrypoints.serve.middleware import authenticate

    guarded = tuple(authenticate.GUARDED_PREFIX)
    authenticate.GUARDED_PREFIX = guarded + tuple(
        p for p in EXTRA_GUARDED_PREFIXES if p not in guarded
    )


def _expects_object(annotation: Any) -> bool:
    """Whether a request-model field takes a JSON object (a dict, a model or a
    dataclass)."""
    import dataclasses
    import types
    import typing

    import pydantic

    if isinstance(annotation, type):
        return issubclass(annotation, (dict, pydantic.BaseModel)) or dataclasses.is_dataclass(
            annotation
        )
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_expects_object(arg) for arg in typing.get_args(annotation))
    return False


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "null")


def _guarded(
    name: str, validator: Callable[..., Any], object_fields: frozenset[str]
) -> Callable[..., Any]:
    def guard(data: Any, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except (AttributeError, TypeError, KeyError) as e:
            from vllm.exceptions import VLLMValidationError

            # Not a ValueError: pydantic lets it out as it is, and the server
            # answers it with a one-line HTTP 400 naming the field (a
            # ValueError would become pydantic's multi-line error dump).
            wrong = [
                field
                for field in sorted(object_fields)
                if isinstance(data, dict) and data.get(field) is not None
                and not isinstance(data[field], dict)
            ]  # fmt: skip
            if wrong:
                field = wrong[0]
                raise VLLMValidationError(
                    f"{field} must be a JSON object, not {_json_type(data[field])}",
                    parameter=field,
                ) from e
            raise VLLMValidationError(f"invalid request ({name.strip('_')}): {e}") from e

    # pydantic inspects the signature: (data) or (data, info).
    if len(inspect.signature(validator).parameters) == 1:

        def before(data: Any) -> Any:
            return guard(data, lambda: validator(data))
    else:

        def before(data: Any, info: Any) -> Any:
            return guard(data, lambda: validator(data, info))

    before._sdar_guarded = True  # type: ignore[attr-defined]
    return before


def harden_request_validators() -> None:
    """vLLM's "before" validators of the completion and chat request models
    assume the JSON types they expect (`{"structured_outputs": false}` ran
    `False.get(...)`): such a crash escaped pydantic and answered HTTP 500.
    Each is wrapped so a type error in the body is a one-line 400 naming the
    field that should have been an object (else the check)
    (idempotent; the models are rebuilt before the server builds its routes)."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    for model in (CompletionRequest, ChatCompletionRequest):
        changed = False
        object_fields = frozenset(
            name for name, f in model.model_fields.items() if _expects_object(f.annotation)
        )
        for name, decorator in model.__pydantic_decorators__.model_validators.items():
            if decorator.info.mode == "before" and not getattr(
                decorator.func, "_sdar_guarded", False
            ):
                decorator.func = _guarded(name, decorator.func, object_fields)
                changed = True
        if changed:
            model.model_rebuild(force=True)

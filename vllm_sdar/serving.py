"""OpenAI server: SDAR options as top-level request fields (`extra_body`).

vLLM's request models accept unknown fields (`extra="allow"`) but drop
them; only `vllm_xargs` reaches `SamplingParams.extra_args`. This wraps
`to_sampling_params` of the completion and chat request models so that
`{"denoising_steps": 2, ...}` works like `{"vllm_xargs": {"denoising_steps": 2}}`.
Validation stays in `vllm_sdar.validation` (HTTP 400 naming the field).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from vllm_sdar.config import SdarOptions


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

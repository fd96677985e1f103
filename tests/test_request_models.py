"""The OpenAI request models with the plugin's hardening, without a server."""

from __future__ import annotations

from typing import Any

import pytest
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.exceptions import VLLMValidationError

from vllm_sdar.serving.request_fields import harden_request_validators

COMPLETION = {"model": "m", "prompt": "hi"}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "model,base", [(CompletionRequest, COMPLETION), (ChatCompletionRequest, CHAT)]
)
@pytest.mark.parametrize("field,value", [("structured_outputs", False), ("structured_outputs", 7),
                                         ("structured_outputs", "json")])  # fmt: skip
def test_wrong_json_types_are_validation_errors(
    model: Any, base: dict[str, Any], field: str, value: Any
) -> None:
    """Regression: `{"structured_outputs": false}` raised AttributeError inside
    vLLM's validator, which the server answered with HTTP 500; then pydantic's
    multi-line dump. Now one line naming the field (VLLMValidationError: the
    server's HTTP 400 with `param`)."""
    harden_request_validators()
    harden_request_validators()  # idempotent
    with pytest.raises(VLLMValidationError) as err:
        model.model_validate({**base, field: value})
    assert err.value.parameter == field
    assert str(err.value).startswith(f"{field} must be a JSON object, not a")
    assert "\n" not in str(err.value)
    assert model.model_validate(base).model == "m"  # valid bodies still parse

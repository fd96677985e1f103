"""Structured-output errors that name the field (HTTP 400 / ValueError).

vLLM checks a request's constraint in the front end
(`SamplingParams._validate_structured_outputs`: the grammar library parses
the schema, regex, choice or grammar) and raises `VLLMValidationError` for
a bad one, but with messages such as "Invalid grammar specification." and
no `parameter`: a client cannot tell which field was wrong. For SDAR
deployments the wrapper below re-raises such an error with the field
named (`structured_outputs.regex`, ...; a `response_format` schema and a
tool's parameters arrive as `structured_outputs.json`) in the message and
as `.parameter`. Everything else is unchanged. Patch 21 in patches/README.md.
"""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_sdar.serving.validation import current_deployment

# vLLM's order (vllm/v1/structured_output/request.py:get_structured_output_key).
FIELDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


def constraint_field(params: Any) -> str:
    """`structured_outputs.<field>` of the constraint a request sets."""
    for name in FIELDS:
        if getattr(params, name, None) not in (None, False):
            return f"structured_outputs.{name}"
    return "structured_outputs"


def install_structured_output_field_names() -> None:
    """Wrap SamplingParams._validate_structured_outputs (idempotent)."""
    from vllm.sampling_params import SamplingParams

    original = SamplingParams._validate_structured_outputs
    if getattr(original, "_sdar_named", False):
        return

    def validate(self: SamplingParams, *args: Any, **kwargs: Any) -> None:
        # Read before the call: vLLM rewrites a choice into a grammar.
        field = constraint_field(self.structured_outputs)
        try:
            original(self, *args, **kwargs)
        except VLLMValidationError as err:
            if err.parameter is not None or current_deployment() is None:
                raise
            raise VLLMValidationError(f"{field}: {err}", parameter=field) from err

    validate._sdar_named = True  # type: ignore[attr-defined]
    SamplingParams._validate_structured_outputs = validate  # type: ignore[method-assign]

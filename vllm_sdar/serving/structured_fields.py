"""Structured-output errors that name the field (HTTP 400 / ValueError).

vLLM checks a request's constraint in the front end
(`SamplingParams._validate_structured_outputs`: the grammar library parses
the schema, regex, choice or grammar) and raises `VLLMValidationError` for
a bad one, but with messages such as "Invalid grammar specification." and
no `parameter`: a client cannot tell which field was wrong. For SDAR
deployments the wrapper below re-raises such an error with the field
named (`structured_outputs.regex`, ...; a `response_format` schema and a
tool's parameters arrive as `structured_outputs.json`) in the message and
as `.parameter`. For SDAR deployments it also refuses (400, naming the
field) a constraint that no token of the model's vocabulary can begin.
Everything else is unchanged. Patch 22 in patches/README.md.
"""

from __future__ import annotations

import functools
from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_sdar.algorithm.grammar_compile import ConstraintCompiler, GrammarSpec
from vllm_sdar.serving.validation import current_deployment

# vLLM's order (vllm/v1/structured_output/request.py:get_structured_output_key).
FIELDS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")


def constraint_field(params: Any) -> str:
    """`structured_outputs.<field>` of the constraint a request sets."""
    for name in FIELDS:
        if getattr(params, name, None) not in (None, False):
            return f"structured_outputs.{name}"
    return "structured_outputs"


@functools.cache
def _compiler(tokenizer: Any, vocab_size: int) -> ConstraintCompiler:
    return ConstraintCompiler(tokenizer, vocab_size)


def check_vocabulary_can_start(
    params: Any, field: str, model_config: Any, structured_outputs_config: Any, tokenizer: Any
) -> None:
    """HTTP 400 when no token of the model's vocabulary can begin an output the
    constraint accepts (a JSON request to a model without "{"): the engine
    could only end such a request with an error.

    Checked with the grammar xgrammar compiles for it, as the engine's
    (other backends are left to the engine's own dead-end rule,
    engine/structured.py).
    """
    so = params.structured_outputs
    if getattr(so, "_backend", None) not in (None, "xgrammar") or tokenizer is None:
        return
    deployment = current_deployment()
    any_whitespace = not getattr(structured_outputs_config, "disable_any_whitespace", False)
    spec = GrammarSpec.from_params(so, any_whitespace)
    stop_ids = {*(params.stop_token_ids or ()), getattr(tokenizer, "eos_token_id", None)} - {None}
    compiler = _compiler(tokenizer, model_config.get_vocab_size())
    allowed = set(compiler.first_allowed(spec, stop_ids))
    allowed.discard(deployment.mask_id if deployment is not None else -1)
    if not allowed:
        raise VLLMValidationError(
            f"{field}: no token of this model's vocabulary can begin an output the "
            "constraint accepts (its vocabulary lacks every character the constraint "
            "may start with)",
            parameter=field,
        )


def install_structured_output_field_names() -> None:
    """Wrap SamplingParams._validate_structured_outputs (idempotent)."""
    from vllm.sampling_params import SamplingParams

    original = SamplingParams._validate_structured_outputs
    if getattr(original, "_sdar_named", False):
        return

    def validate(
        self: SamplingParams,
        model_config: Any,
        structured_outputs_config: Any,
        tokenizer: Any,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        # Read before the call: vLLM rewrites a choice into a grammar.
        field = constraint_field(self.structured_outputs)
        try:
            original(self, model_config, structured_outputs_config, tokenizer, *args, **kwargs)
        except VLLMValidationError as err:
            if err.parameter is not None or current_deployment() is None:
                raise
            raise VLLMValidationError(f"{field}: {err}", parameter=field) from err
        if current_deployment() is not None and self.structured_outputs is not None:
            check_vocabulary_can_start(
                self, field, model_config, structured_outputs_config, tokenizer
            )

    validate._sdar_named = True  # type: ignore[attr-defined]
    SamplingParams._validate_structured_outputs = validate  # type: ignore[method-assign]

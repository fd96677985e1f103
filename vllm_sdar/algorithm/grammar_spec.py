"""A structured-output constraint as data (no compiler, no vLLM): what a
request asks for, read by `request_settings` and compiled by
`grammar_compile`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GrammarSpec:
    """A structured-output constraint, in the fields of vLLM's
    StructuredOutputsParams (exactly one set). any_whitespace: the negation
    of the deployment's `structured_outputs_config.disable_any_whitespace`."""

    json: str | None = None  # a JSON schema, as text
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None  # EBNF (GBNF) or Lark
    structural_tag: str | None = None  # xgrammar's structural tag, as JSON text
    any_whitespace: bool = True

    @classmethod
    def from_params(cls, params: Any, any_whitespace: bool = True) -> GrammarSpec:
        """From a vLLM StructuredOutputsParams (or anything with its fields)."""
        schema = params.json
        return cls(
            json=schema if schema is None or isinstance(schema, str) else json.dumps(schema),
            json_object=bool(params.json_object),
            regex=params.regex,
            choice=tuple(params.choice) if params.choice is not None else None,
            grammar=params.grammar,
            structural_tag=params.structural_tag,
            any_whitespace=any_whitespace,
        )

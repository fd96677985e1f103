"""Constraints compiled as vLLM's xgrammar backend compiles them.

`vllm/v1/structured_output/backend_xgrammar.py` builds one TokenizerInfo
over the model's vocabulary and compiles each request kind with its own
call; this module does the same outside the engine, for the reference
decoder (which must mask exactly as the engine does) and for the front
end's check that a constraint can be met by the model's vocabulary at all
(serving/structured_fields.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from vllm_sdar.algorithm.grammar_spec import GrammarSpec


class ConstraintCompiler:
    """One xgrammar compiler over a tokenizer and the model's vocabulary."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._compiler = xgr.GrammarCompiler(info, max_threads=8, cache_enabled=True)

    def matcher(self, spec: GrammarSpec, stop_ids: Iterable[int]) -> Any:
        """An xgrammar GrammarMatcher for `spec` with the request's stop ids
        (every EOS id and stop_token_ids: vLLM's all_stop_token_ids) as the
        grammar's end."""
        import xgrammar as xgr
        from vllm.v1.structured_output.utils import choice_as_grammar, grammar_is_likely_lark

        compiler = self._compiler
        separators = None if spec.any_whitespace else (",", ":")
        if spec.json is not None or spec.json_object:
            schema = spec.json if spec.json is not None else '{"type": "object"}'
            ctx = compiler.compile_json_schema(
                schema, any_whitespace=spec.any_whitespace, separators=separators
            )
        elif spec.regex is not None:
            ctx = compiler.compile_regex(spec.regex)
        elif spec.choice is not None:
            ctx = compiler.compile_grammar(choice_as_grammar(list(spec.choice)))
        elif spec.grammar is not None:
            is_lark = grammar_is_likely_lark(spec.grammar)
            compile_text = compiler.compile_lark if is_lark else compiler.compile_grammar
            ctx = compile_text(spec.grammar)
        elif spec.structural_tag is not None:
            tag = json.loads(spec.structural_tag)
            if "structures" in tag:  # the legacy form, as vLLM reads it
                items = [
                    xgr.StructuralTagItem(
                        begin=s["begin"], schema=json.dumps(s["schema"]), end=s["end"]
                    )
                    for s in tag["structures"]
                ]
                ctx = compiler.compile_structural_tag(items, tag["triggers"])
            else:
                ctx = compiler.compile_structural_tag(spec.structural_tag)
        else:
            raise ValueError("GrammarSpec sets no constraint")
        return xgr.GrammarMatcher(ctx, override_stop_tokens=sorted(stop_ids) or None)

    def first_allowed(self, spec: GrammarSpec, stop_ids: Iterable[int]) -> list[int]:
        """The token ids the constraint allows as the first output token."""
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(1, self.vocab_size)
        self.matcher(spec, stop_ids).fill_next_token_bitmask(bitmask, 0)
        bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
        return np.nonzero(bits[: self.vocab_size])[0].tolist()

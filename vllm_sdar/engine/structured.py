"""Structured outputs in the SDAR engine: the grammar lives in the scheduler.

vLLM's StructuredOutputManager compiles each request's grammar (xgrammar
unless the request needs a fallback) in the engine-core process, where the
scheduler runs: `request.structured_output_request.grammar`. Only the
scheduler knows which tokens are final, so only the scheduler touches the
grammar (the rule itself: `vllm_sdar.algorithm.grammar_rule`):

- at schedule time, for a request whose grammar has not ended, it fills the
  bitmask of the open block's first masked slot from the grammar, which
  has been advanced over every final token (the block's decided prefix
  included), and ships it in the step's BlockPlan: every tensor-parallel
  rank gets the same mask, and the runner holds no grammar state;
- the runner draws that slot under the mask and counts it as certain, so
  it is always unmasked; the other slots are proposed and selected as for
  any request, and the runner returns the selected ones as usual;
- in update_from_output it takes, left to right from that slot, the
  selected slots the grammar accepts (`validate_tokens`, which leaves the
  grammar as it was), advances the grammar by them (`accept_tokens`: they
  are final output now) and puts MASK back everywhere after them.

The scheduler therefore accepts only what the runner's selection chose:
the runner's output keeps its shape (the block's new contents), and an
unselected slot's proposal, which the strategy judged not ready, is never
used (a later step proposes it again, with the accepted prefix in view).

vLLM's own bitmask path (`get_grammar_bitmask` -> `GrammarOutput` -> the
runner's `apply_grammar_bitmask`, one mask per next token) stays unused:
the SDAR scheduler never sets `SchedulerOutput.has_structured_output_requests`,
so vLLM builds none, and a step without structured requests does no
grammar work at all. Scheduler internals used (vLLM 0.32):
`_handle_blocked_waiting_request`, `deferred_waiting`,
`grammar_compile_error_reqs`, `finish_requests` (patches/README.md, 2).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from vllm.v1.engine import EngineCoreOutput
from vllm.v1.request import Request, RequestStatus

from vllm_sdar.algorithm.grammar_rule import accept_left_to_right, allowed_ids, bitmask_words
from vllm_sdar.engine.request_end import ended_output

if TYPE_CHECKING:
    from vllm.v1.structured_output.backend_types import StructuredOutputGrammar

logger = logging.getLogger("vllm." + __name__)


def grammar_of(request: Request) -> StructuredOutputGrammar | None:
    """The request's grammar while it constrains the output: compiled and
    not ended. After the grammar has ended (its stop token accepted, e.g.
    under ignore_eos) the request is unconstrained, as in vLLM, whose
    bitmask then allows every token."""
    structured = request.structured_output_request
    if structured is None:
        return None
    grammar = structured.grammar
    if grammar is None or isinstance(grammar, Exception) or grammar.is_terminated():
        return None
    return grammar


class StructuredOutputs:
    """The scheduler's side of the rule: masks out, final tokens in."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        # One row, refilled per request: vLLM's backends write bitmasks into
        # an int32 [rows, ceil(vocab / 32)] tensor (xgrammar's layout).
        self._row = torch.full((1, bitmask_words(vocab_size)), -1, dtype=torch.int32)
        # request id -> why its grammar cannot go on (ended at the next update).
        self._dead_ends: dict[str, str] = {}

    def can_continue(self, request: Request, mask: np.ndarray, mask_id: int) -> bool:
        """False (and the request marked to end) when the grammar allows no
        token of the model's vocabulary at the open block's first masked
        slot: a draw under an empty mask would be an arbitrary token the
        grammar rejects, step after step. The front end refuses a constraint
        that cannot even begin (serving/structured_fields.py); this catches
        one that runs into such a dead end later."""
        allowed = [i for i in allowed_ids(mask) if i < self.vocab_size and i != mask_id]
        if allowed:
            return True
        self._dead_ends[request.request_id] = (
            "sdar_grammar_dead_end: the structured-output constraint allows no token of "
            f"this model's vocabulary after {request.num_output_tokens} output tokens"
        )
        return False

    def finish_dead_ends(self, scheduler: Any, outputs: dict[int, list[EngineCoreOutput]]) -> None:
        """End the requests `can_continue` stopped, with the reason as their
        stop_reason and finish_reason "stop" (vLLM's server turns "error"
        into HTTP 500 with no reason; the output so far is a valid prefix)."""
        if not self._dead_ends:
            return
        dead, self._dead_ends = self._dead_ends, {}
        for request in scheduler.finish_requests(set(dead), RequestStatus.FINISHED_STOPPED):
            request.stop_reason = dead[request.request_id]
            logger.warning("SDAR request %s: %s", request.request_id, request.stop_reason)
            outputs[request.client_index].append(ended_output(request))

    def first_slot_mask(self, request: Request) -> np.ndarray | None:
        """The bitmask for the open block's first masked slot (a copy, shipped
        with the plan); None when the request is unconstrained."""
        grammar = grammar_of(request)
        if grammar is None:
            return None
        self._row.fill_(-1)
        grammar.fill_bitmask(self._row, 0)
        return self._row[0].numpy().copy()

    @staticmethod
    def accept(
        request: Request, before: Sequence[int], proposed: Sequence[int], mask_id: int
    ) -> list[int]:
        """The block after the step: the accepted run kept, the rest MASK.

        The grammar advances by the accepted tokens, which become final
        output in the same update (`_update_request_with_output`).
        """
        grammar = grammar_of(request)
        if grammar is None:  # compiled and unended when the step was planned
            return list(proposed)
        block, accepted = accept_left_to_right(
            before, proposed, mask_id, lambda run: len(grammar.validate_tokens(run))
        )
        if not accepted:
            # The first slot was drawn under the grammar's own mask, so this
            # needs non-finite logits or a backend bug; the block stays as it
            # was and the max_block_steps safety net ends the request.
            logger.error(
                "SDAR request %s: the grammar rejected the token drawn under its mask (%s)",
                request.request_id,
                list(proposed),
            )
        elif not grammar.accept_tokens(request.request_id, accepted):
            logger.error("SDAR request %s: grammar state out of step", request.request_id)
        return block


def grammar_ready(scheduler: Any, request: Request) -> bool:
    """Whether a waiting request may be scheduled as far as its grammar goes.

    A structured request waits (status WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR)
    until vLLM's compile finishes; vLLM's own check promotes it to WAITING,
    or records a failed compile in `grammar_compile_error_reqs`, which
    `finish_grammar_errors` ends with an error.
    """
    if request.status != RequestStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR:
        return True
    ready = scheduler._handle_blocked_waiting_request(request)
    if ready:
        # vLLM counts blocked requests apart in its stats until admitted.
        scheduler.deferred_waiting.discard(request)
    return ready


def finish_grammar_errors(scheduler: Any, outputs: dict[int, list[EngineCoreOutput]]) -> None:
    """End the requests whose grammar failed to compile, as vLLM's
    update_from_output does (finish_reason "error", no tokens)."""
    failed = set(scheduler.grammar_compile_error_reqs)
    if not failed:
        return
    scheduler.grammar_compile_error_reqs.clear()
    for request in scheduler.finish_requests(failed, RequestStatus.FINISHED_ERROR):
        outputs[request.client_index].append(ended_output(request))

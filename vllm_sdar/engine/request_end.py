"""The last output of a request the scheduler ends outside a step's tokens
(a bad LoRA adapter, a grammar that failed to compile or reached a dead
end): no new tokens, its finish reason and stop reason."""

from __future__ import annotations

from vllm.v1.engine import EngineCoreOutput
from vllm.v1.request import Request


def ended_output(request: Request) -> EngineCoreOutput:
    return EngineCoreOutput(
        request_id=request.request_id,
        new_token_ids=[],
        finish_reason=request.get_finished_reason(),
        stop_reason=request.stop_reason,
        events=request.take_events(),
        trace_headers=request.trace_headers,
    )

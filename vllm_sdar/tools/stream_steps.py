"""Run requests through an `LLM`'s engine one step at a time, as a stream.

What a streaming client receives after every engine step (delta outputs),
with the time each chunk arrived. Shared by the streaming tests, the
self-check and the streaming benchmark, which all need the chunks of many
requests in one batch (`LLM.generate` only returns whole outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stream:
    prompt: list[int]
    chunks: list[list[int]] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)  # seconds since the request was added
    logprobs: list[Any] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    forwards: int = 0  # denoising forwards, from the request's SDAR metrics
    steps: int = 0  # engine steps that ran while it was unfinished

    @property
    def token_ids(self) -> list[int]:
        return sum(self.chunks, [])


def stream_steps(
    llm: Any,
    prompts: Sequence[Sequence[int]],
    params: Sequence[Any],
    on_step: Callable[[dict[str, Stream]], None] | None = None,
) -> list[Stream]:
    """Adds every request, then steps the engine until all finish;
    `on_step(streams)` runs after every step (request ids "s0", "s1", ...)."""
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    streams = {f"s{i}": Stream(list(p)) for i, p in enumerate(prompts)}
    start = time.perf_counter()
    for (rid, s), p in zip(streams.items(), params, strict=True):
        p = p.clone()
        p.output_kind = RequestOutputKind.DELTA
        engine.add_request(rid, {"prompt_token_ids": s.prompt}, p)
    while engine.has_unfinished_requests():
        for s in streams.values():
            s.steps += s.finish_reason is None
        for out in engine.step():
            s = streams[out.request_id]
            c = out.outputs[0]
            if c.token_ids:
                s.chunks.append(list(c.token_ids))
                s.chunk_times.append(time.perf_counter() - start)
                s.logprobs += list(c.logprobs or [])
            s.text += c.text
            if out.finished:
                s.finish_reason = c.finish_reason
                # None when the front end ended it (a stop string).
                if c.spec_decode_metrics is not None:
                    s.forwards = sum(c.spec_decode_metrics.histogram)
        if on_step is not None:
            on_step(streams)
    return list(streams.values())

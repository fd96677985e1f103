"""The API server's ends: a requested stop ends every open request, and a
dead engine makes `vllm-sdar serve` exit non-zero.

vLLM 0.32, on SIGTERM (abort mode, the default `--shutdown-timeout 0`),
stops the engine core and cancels the task that feeds request queues, but
the requests still waiting on those queues are never told: their streams
stay open, and uvicorn then waits for those connections to close, so the
server and its clients hang until the clients give up. `end_requests_on_shutdown`
hands every open request vLLM's own EngineDeadError once the engine is
stopped (the answer a dead engine gives). When the engine core dies
unasked, the server shuts down but exits 0; `record_engine_death` lets
`vllm_sdar.serving.cli` tell the two apart.
"""

from __future__ import annotations

import threading
from typing import Any

_stopping = threading.Event()  # a stop was asked for (SIGTERM, SIGINT)
_engine_died = threading.Event()  # EngineDeadError made while no stop was asked for


def end_requests_on_shutdown() -> None:
    """Wrap AsyncLLM.shutdown (front end; idempotent)."""
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.exceptions import EngineDeadError

    original = AsyncLLM.shutdown
    if getattr(original, "_sdar_wrapped", False):
        return

    def shutdown(self: Any, *args: Any, **kwargs: Any) -> None:
        _stopping.set()
        handler = getattr(self, "output_handler", None)
        loop = handler.get_loop() if handler is not None else None
        original(self, *args, **kwargs)
        if loop is not None and not loop.is_closed():
            # shutdown runs on an executor thread; queues belong to the loop.
            loop.call_soon_threadsafe(self.output_processor.propagate_error, EngineDeadError())

    shutdown._sdar_wrapped = True  # type: ignore[attr-defined]
    AsyncLLM.shutdown = shutdown  # type: ignore[method-assign]


def record_engine_death() -> threading.Event:
    """An event set when the front end sees its engine dead unasked."""
    from vllm.v1.engine.exceptions import EngineDeadError

    original = EngineDeadError.__init__
    if not getattr(original, "_sdar_wrapped", False):

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if not _stopping.is_set():
                _engine_died.set()
            original(self, *args, **kwargs)

        __init__._sdar_wrapped = True  # type: ignore[attr-defined]
        EngineDeadError.__init__ = __init__  # type: ignore[method-assign]
    return _engine_died

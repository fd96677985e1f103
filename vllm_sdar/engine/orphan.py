"""Engine processes exit when the process that started them dies.

vLLM 0.32 starts the engine core (and, with tensor parallelism, one worker
per rank) as child processes. Workers watch the engine core through a
death pipe, but the engine core has no such link to its own parent: when
the API server or the Python process holding `LLM(...)` is SIGKILLed, the
engine core keeps running whatever it was doing (seen: 14 minutes at full
CPU, holding the model's memory). This watchdog, started in every engine
process by the plugin's entry point, polls its parent id and, once the
parent is gone, shuts the process down the way a SIGTERM does (vLLM's own
handlers close the workers), then kills it if that has not finished
within a grace period (a step stuck in the model must not keep it alive).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

# multiprocessing names vLLM gives its engine processes
# (v1/engine/utils.py, v1/executor/multiproc_executor.py).
ENGINE_PROCESS_PREFIXES = ("EngineCore", "VllmWorker")
POLL_S = 0.5
GRACE_S = 10.0

_started = False


def _watch(parent_pid: int, poll_s: float, grace_s: float) -> None:
    # The parent id changes (to init or a subreaper) exactly when the parent
    # dies; a pipe sentinel could also close while the parent lives.
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    logger.error(
        "SDAR: parent process %d is gone; shutting down %s (pid %d)",
        parent_pid,
        multiprocessing.current_process().name,
        os.getpid(),
    )
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_with_parent(poll_s: float = POLL_S, grace_s: float = GRACE_S) -> bool:
    """Start the watchdog if this is a vLLM engine child process (once per
    process); returns whether one is running."""
    global _started
    if _started:
        return True
    process = multiprocessing.current_process()
    parent = multiprocessing.parent_process()
    if parent is None or not process.name.startswith(ENGINE_PROCESS_PREFIXES):
        return False  # an in-process engine belongs to its user's process
    _started = True
    threading.Thread(
        target=_watch, args=(parent.pid, poll_s, grace_s), daemon=True, name="SdarParentWatch"
    ).start()
    return True

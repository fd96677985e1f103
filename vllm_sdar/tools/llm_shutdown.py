"""Free an offline `LLM` so the next engine in this process starts clean.

vLLM's `LLM` has no close(): its engine core (and, with an in-process core,
the torch distributed group it set up) lives until garbage collection. The
self-check, the tests and the benchmarks start engine after engine in one
process, so each ends its engine here, the same way.
"""

from __future__ import annotations

import gc
from typing import Any


def shutdown_llm(llm: Any) -> None:
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    cleanup_dist_env_and_memory()

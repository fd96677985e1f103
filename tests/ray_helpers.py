"""A local Ray cluster a test module starts and stops itself.

A new local head on this machine only (never an existing cluster's
address); Ray's workers run at nice 0 (its default of 15 stretched a Serve
deploy past 10 minutes on two busy cores, see shared/notes/platform.md);
`ray stop` in teardown leaves no Ray process behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ray


@contextmanager
def local_ray(**resources: float) -> Iterator[Any]:
    os.environ["RAY_worker_niceness"] = "0"  # noqa: SIM112 (Ray's spelling)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A new local head, never another cluster's address (an earlier engine's).
    os.environ.pop("RAY_ADDRESS", None)
    # Ray kills workers when the *machine* passes 95% memory; on a machine
    # shared with other engines that killed the Serve controller mid-deploy.
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"  # noqa: SIM112
    ray.init(
        num_cpus=2,
        resources=resources or None,
        include_dashboard=False,
    )
    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    try:
        yield ray
    finally:
        ray.shutdown()
        _kill_children_of_session(raylet)
        ray_cli = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")
        subprocess.run([ray_cli, "stop", "--force"], check=False, capture_output=True, timeout=120)


def _kill_children_of_session(raylet: int) -> None:
    """vLLM engine cores a Ray worker spawned are no Ray processes: when their
    replica dies abruptly `ray stop` leaves them. They carry the raylet's pid."""
    mark = f"RAY_RAYLET_PID={raylet}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue

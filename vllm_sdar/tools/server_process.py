"""A `vllm-sdar serve` child process, run the way a user runs it.

Shared by the server tests and the serving benchmark: both need a real API
server (front end + engine-core process) on a free port, its /metrics
counters, and a clean shutdown.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def cli() -> str:
    """The `vllm-sdar` command of this interpreter's environment."""
    return str(Path(sys.executable).parent / "vllm-sdar")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs as users run it
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + log.read_text()[-3000:])
        try:
            if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server not healthy:\n" + log.read_text()[-3000:])
        time.sleep(1)


@contextmanager
def serve(
    args: Sequence[str], cwd: Path, timeout: float, command: str | None = None
) -> Iterator[str]:
    """`vllm-sdar serve ARGS --port <free>` in `cwd` (log: cwd/server.log);
    yields the base URL once /health answers, terminates it on exit.
    `command`: another environment's `vllm-sdar` (default: this one's)."""
    with serve_process(args, cwd, timeout, command) as (base, _):
        yield base


@contextmanager
def serve_process(
    args: Sequence[str], cwd: Path, timeout: float, command: str | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`serve`, also yielding the server process (fault tests signal it and
    its engine processes)."""
    port = free_port()
    log_path = cwd / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [command or cli(), "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            env=server_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, proc, log_path, timeout)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def metric_totals(base: str, names: Iterable[str]) -> dict[str, float]:
    """Each Prometheus metric of /metrics summed over its label sets."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals

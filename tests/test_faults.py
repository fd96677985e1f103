"""Faults under load: a killed or stopped process never leaves a client waiting
forever nor an engine computing for nobody.

Each test starts its own `vllm-sdar serve` (or `LLM(...)` holder) because each
one kills it. Bounds: clients must see the end of their request within
CLIENT_BOUND_S of the fault, and every process of the deployment must be gone
within EXIT_BOUND_S (the orphan watchdog polls every 0.5 s and gives vLLM's
own shutdown 10 s before it kills; the rest is slack for a loaded 2-core
machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from vllm_sdar.tools.server_process import serve_process, server_env

from .engine_helpers import TINY_SERVER_FLAGS

MODEL = "sdar-4b"
CLIENT_BOUND_S = 30.0
EXIT_BOUND_S = 45.0
BASE_ARGS = [
    MODEL,
    *TINY_SERVER_FLAGS,
]  # fmt: skip
LONG_STREAM = {
    "model": MODEL,
    "max_tokens": 480,
    "temperature": 0,
    "ignore_eos": True,
    "stream": True,
    "denoising_steps": 4,
    "remasking_strategy": "low_confidence_static",
}


@dataclass
class Outcome:
    chunks: int = 0
    finished: bool = False  # a chunk carried a finish_reason: a complete answer
    error: str | None = None  # the connection failed or the stream sent an error
    ended_at: float | None = None


class Load:
    """N long streaming completions on threads, each bounded by an HTTP timeout
    far above CLIENT_BOUND_S (so a hang shows up as a late end, not a pass)."""

    def __init__(self, base: str, n: int = 4) -> None:
        self.outcomes = [Outcome() for _ in range(n)]
        self.threads = [
            threading.Thread(target=self._run, args=(base, i, o), daemon=True)
            for i, o in enumerate(self.outcomes)
        ]
        for t in self.threads:
            t.start()

    @staticmethod
    def _run(base: str, i: int, out: Outcome) -> None:
        body = {**LONG_STREAM, "prompt": [100 + i, 200 + i, 300 + i]}
        try:
            with httpx.stream(
                "POST", base + "/v1/completions", json=body, timeout=CLIENT_BOUND_S * 4
            ) as r:
                for line in r.iter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[5:])
                    if "error" in chunk:
                        out.error = json.dumps(chunk["error"])[:300]
                    for choice in chunk.get("choices", []):
                        out.chunks += 1
                        out.finished |= choice.get("finish_reason") is not None
        except Exception as e:  # any error is an ending: what matters is when
            out.error = f"{type(e).__name__}: {e}"
        out.ended_at = time.monotonic()

    def wait_streaming(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(o.chunks for o in self.outcomes):
            assert time.monotonic() < deadline, self.outcomes
            assert not any(o.ended_at for o in self.outcomes), self.outcomes
            time.sleep(0.2)

    def join(self, since: float) -> list[Outcome]:
        for t in self.threads:
            t.join(timeout=max(0.0, since + CLIENT_BOUND_S - time.monotonic()))
        late = [o for o in self.outcomes if o.ended_at is None]
        assert not late, f"{len(late)} clients still waiting {CLIENT_BOUND_S} s after the fault"
        return self.outcomes


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def named(procs: list[psutil.Process], title: str) -> list[psutil.Process]:
    """vLLM titles its processes (setproctitle): VLLM::EngineCore, VLLM::Worker_TP1..."""
    found = []
    for p in procs:
        try:
            if title in " ".join(p.cmdline()) or title in p.name():
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_all_exit(procs: list[psutil.Process], since: float) -> float:
    """Every process gone within EXIT_BOUND_S of `since`; returns the seconds taken."""
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, since + EXIT_BOUND_S - time.monotonic()))
    leftover = [(p.pid, " ".join(p.cmdline())) for p in alive if p.is_running()]
    for p in alive:
        p.kill()  # do not leave them to the next test
    assert not leftover, f"still running {EXIT_BOUND_S} s after the fault: {leftover}"
    taken = time.monotonic() - since
    print(f"all {len(procs)} processes gone {taken:.1f} s after the fault")
    return taken


def health_is_200(base: str) -> bool:
    try:
        return urllib.request.urlopen(base + "/health", timeout=3).status == 200
    except OSError:
        return False


@pytest.fixture
def workdir(tiny_dense: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_dense, tmp_path / MODEL)
    return tmp_path


@pytest.fixture
def server(
    workdir: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, subprocess.Popen]]:
    extra = getattr(request, "param", [])
    if "--tensor-parallel-size" in extra:
        # One NUMA node here: vLLM's CPU auto-binding refuses two workers.
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    with serve_process([*BASE_ARGS, *extra], workdir, timeout=400) as (base, proc):
        yield base, proc


def _kill_engine_process(server: tuple[str, subprocess.Popen], title: str) -> None:
    base, proc = server
    load = Load(base)
    load.wait_streaming()
    procs = descendants(proc.pid)
    target = named(procs, title) or named(procs, title.split("_")[0])
    assert target, [" ".join(p.cmdline()) for p in procs]
    print(f"killing {' '.join(target[-1].cmdline()).strip()} (pid {target[-1].pid})")
    t0 = time.monotonic()
    target[-1].send_signal(signal.SIGKILL)
    outcomes = load.join(t0)
    assert not any(o.finished for o in outcomes), "a request finished on a dead engine"
    assert all(o.error for o in outcomes), outcomes
    deadline = t0 + CLIENT_BOUND_S
    while health_is_200(base) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not health_is_200(base)
    try:
        code = proc.wait(timeout=max(1.0, t0 + EXIT_BOUND_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {EXIT_BOUND_S} s after its {title} was killed")
    assert code != 0  # regression: vLLM's server exited 0 after its engine died
    assert_all_exit(procs, t0)


@pytest.mark.engine
def test_sigkill_engine_core_ends_requests_and_server(server) -> None:
    _kill_engine_process(server, "EngineCore")


@pytest.mark.engine
@pytest.mark.parametrize(
    "server",
    [["--tensor-parallel-size", "2", "--distributed-executor-backend", "mp"]],
    indirect=True,
)
def test_tp2_sigkill_one_worker_ends_requests_and_server(server) -> None:
    _kill_engine_process(server, "Worker_TP1")


@pytest.mark.engine
def test_sigterm_under_load_exits_cleanly(server) -> None:
    base, proc = server
    load = Load(base)
    load.wait_streaming()
    procs = descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    outcomes = load.join(t0)
    assert all(o.finished or o.error for o in outcomes), outcomes
    code = proc.wait(timeout=EXIT_BOUND_S)
    print(f"SIGTERM: exit status {code}")
    assert code == 0  # a requested stop is not a crash
    assert_all_exit(procs, t0)


@pytest.mark.engine
def test_sigkill_api_server_takes_engine_down(server) -> None:
    """Regression: the engine core had no link to a dead front end and kept running."""
    base, proc = server
    load = Load(base)
    load.wait_streaming()
    procs = descendants(proc.pid)
    assert named(procs, "EngineCore")
    t0 = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    load.join(t0)
    assert_all_exit(procs, t0)


HOLDER = """
import sys
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True,
              gpu_memory_utilization=0.5, max_model_len=512)
    print("READY", flush=True)
    params = SamplingParams(max_tokens=480, temperature=0, ignore_eos=True,
                            extra_args={"denoising_steps": 4,
                                        "remasking_strategy": "low_confidence_static"})
    for _ in range(100):  # bounded: the test kills it long before
        llm.generate([{"prompt_token_ids": [101, 102, 103]}] * 8, params, use_tqdm=False)
"""


@pytest.mark.engine
def test_sigkill_llm_holder_takes_engine_down(workdir: Path) -> None:
    """Regression: after the `LLM(...)` holder was SIGKILLed mid-request, its
    EngineCore kept computing (14 minutes before it was killed by hand)."""
    env = server_env()
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # the engine core in its own process
    log = workdir / "holder.log"
    with log.open("w") as out:
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(workdir / MODEL)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 400
        while "READY" not in log.read_text():
            assert holder.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        procs = descendants(holder.pid)
        assert named(procs, "EngineCore")
        time.sleep(3)  # inside generate(): the engine is mid-request
        assert all(p.is_running() for p in named(procs, "EngineCore"))
        t0 = time.monotonic()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
        assert_all_exit(procs, t0)
    finally:
        if holder.poll() is None:
            holder.kill()

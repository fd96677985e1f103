"""Objects kept alive in their own processes and called in turn.

A study compares engines that must not share a process (each needs its own
environment: LD_PRELOAD, KV cache size, one vLLM engine per process) but
must be timed interleaved, so load drift hits every one alike. A `Worker`
starts `python -m benchmarks.harness.workers FACTORY KWARGS CONTROL`: the
child builds `FACTORY(**KWARGS)` once (e.g. loads an engine), writes the
object's `info` to CONTROL/ready.json, then answers one `measure(**call)`
per line on its stdin with CONTROL/<n>.json. Results travel in files
because vLLM logs to stdout.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.harness.env import configure

REPO = Path(__file__).resolve().parents[2]


class Worker:
    """The parent's handle on one worker process."""

    def __init__(
        self,
        factory: str,
        kwargs: dict[str, Any],
        env: dict[str, str],
        control: Path,
        label: str,
        cwd: Path = REPO,
    ) -> None:
        """cwd: the child's working directory, first on its sys.path (another
        tree runs other code: benchmarks.step_cost's `--before`)."""
        self.label, self.control = label, control
        control.mkdir(parents=True)
        # Held for the worker's lifetime (closed in close()), so no `with`.
        self.log = open(control / "worker.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", __name__, factory, json.dumps(kwargs), str(control)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=self.log,
            text=True,
        )
        self.info: dict[str, Any] = json.loads(self._wait(control / "ready.json"))
        self.calls = 0

    def _wait(self, path: Path) -> str:
        while not path.exists():
            if self.proc.poll() is not None:
                log = self.control / "worker.log"
                raise RuntimeError(f"{self.label} worker died, {log}:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        return path.read_text()

    def _send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def measure(self, **call: Any) -> Any:
        self.calls += 1
        self._send({"id": self.calls, "call": call})
        return json.loads(self._wait(self.control / f"{self.calls}.json"))

    def close(self) -> None:
        self._send({"quit": True})
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.log.close()


def run_once(factory: str, kwargs: dict[str, Any], env: dict[str, str], control: Path) -> Any:
    """One measurement in a fresh process (its own environment), then gone."""
    worker = Worker(factory, kwargs, env, control, factory)
    try:
        return worker.measure()
    finally:
        worker.close()


def _serve(factory: str, kwargs: dict[str, Any], control: Path) -> None:
    """The child's loop: build the object, then one measurement per command."""
    module, _, name = factory.partition(":")
    obj = getattr(importlib.import_module(module), name)(**kwargs)
    (control / "ready.json").write_text(json.dumps(getattr(obj, "info", {})))
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        result = obj.measure(**command["call"])
        tmp = control / f"{command['id']}.tmp"
        tmp.write_text(json.dumps(result))
        tmp.rename(control / f"{command['id']}.json")  # atomic: never read half-written
    close = getattr(obj, "close", None)
    if close is not None:
        close()


if __name__ == "__main__":
    configure()  # before the factory's module imports torch or vLLM
    _serve(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]))

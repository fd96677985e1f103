"""Objects kept alive in their own processes and called in turn: engines that
must not share a process but are timed interleaved. A `Worker` starts
`python -m benchmarks.harness.workers FACTORY KWARGS CONTROL`: the child
builds `FACTORY(**KWARGS)` once, writes its `info` to CONTROL/ready.json,
then answers one `measure(**call)` per stdin line with CONTROL/<n>.json
(files, because vLLM logs to stdout).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.harness.engines import REPO
from benchmarks.harness.env import configure, log, worker_env


class Worker:
    """The parent's handle on one worker process."""

    def __init__(
        self, factory: str, kwargs: dict[str, Any], env: dict[str, str], control: Path,
        label: str, cwd: Path = REPO,
    ) -> None:  # fmt: skip
        """cwd: the child's working directory, first on its sys.path (another
        tree runs other code: benchmarks.step_cost's `--before`)."""
        self.label, self.control = label, control
        control.mkdir(parents=True)
        # Held for the worker's lifetime (closed in close()), so no `with`.
        self.log = open(control / "worker.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", __name__, factory, json.dumps(kwargs), str(control)]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=self.log, stderr=self.log, text=True)  # fmt: skip
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


@contextmanager
def pool(
    factory: str, kwargs: Mapping[str, dict[str, Any]], tmp: Path, cwd: Mapping[str, Path] = {}
) -> Iterator[dict[str, Worker]]:
    """A worker per label, `factory(**kwargs[label])`, in `env.worker_env()`
    (cwd: `cwd[label]`, else the repository); all closed at the end."""
    workers: dict[str, Worker] = {}
    try:
        for label, kw in kwargs.items():
            log(f"loading {tmp.name} ({label})")
            control = tmp / label.replace("@", "-")
            workers[label] = Worker(factory, kw, worker_env(), control, label, cwd.get(label, REPO))
        yield workers
    finally:
        for w in workers.values():
            w.close()


def _serve(factory: str, kwargs: dict[str, Any], control: Path) -> None:
    """The child's loop: build the object, then one measurement per command."""
    def write(file: str, value: Any) -> None:  # atomic: the parent never reads half a file
        (control / "tmp").write_text(json.dumps(value))
        (control / "tmp").rename(control / file)

    module, _, name = factory.partition(":")
    obj = getattr(importlib.import_module(module), name)(**kwargs)
    write("ready.json", getattr(obj, "info", {}))
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        write(f"{command['id']}.json", obj.measure(**command["call"]))
    getattr(obj, "close", lambda: None)()


if __name__ == "__main__":
    configure()  # before the factory's module imports torch or vLLM
    _serve(sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3]))

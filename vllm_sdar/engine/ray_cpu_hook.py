"""Arms the Ray-on-CPU patch (`ray_cpu.py`) without importing Ray.

`ray` is an optional extra, and vLLM's `ray_executor_v2` cannot even be
imported without it (its annotations name `ObjectRef`, which it only imports
when Ray is present). `register()` runs in every vLLM process, so it must
not import that module: it calls `arm()`, which costs an attribute write and
a `sys.meta_path` entry. The patch itself is applied the first time vLLM
imports its Ray executor (which vLLM only does when
`--distributed-executor-backend ray` is selected, or a Ray actor unpickles
the plugin's worker class) — or at once where that already happened.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

EXECUTOR = "vllm.v1.executor.ray_executor_v2"
RESOURCE = "vllm_cpu"  # the custom Ray resource CPU ranks are placed on


def arm() -> None:
    """Idempotent; call on the CPU platform only (GPUs keep vLLM's own path)."""
    from vllm.platforms import current_platform

    # Read by Ray code only (the executor, Ray data-parallel placement); a
    # plain attribute, so setting it costs nothing where Ray never runs.
    type(current_platform).ray_device_key = RESOURCE
    if EXECUTOR in sys.modules:
        _apply()
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def _apply() -> None:
    from vllm_sdar.engine.ray_cpu import install

    install()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != EXECUTOR:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchAfterExec(spec.loader)
        return spec


class _PatchAfterExec(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _apply()

    def __getattr__(self, name: str) -> Any:
        # get_source/get_code/... for tracebacks and inspect: the file loader's.
        return getattr(self._inner, name)


_shared_address: str | None = None  # the RAY_ADDRESS share_driver_cluster set


def share_driver_cluster() -> None:
    """Let the engine-core process join the Ray cluster this process started.

    A script that calls `ray.init(num_cpus=2, resources={"vllm_cpu": 2})` and
    then `LLM(..., distributed_executor_backend="ray")` runs the engine core
    in a child process (vLLM's default), whose `ray.init()` found no cluster
    to join (a driver-started cluster leaves no address file, unlike `ray
    start`) and started a new one without the resource. Naming the driver's
    cluster in RAY_ADDRESS, which the child inherits, makes it join.

    Called only for an engine core in its own process. Leaves a RAY_ADDRESS
    the user set alone; replaces (or, with no cluster running here, removes)
    one it set earlier, so a later `ray.init()` of this process never finds
    the address of a cluster that is gone.
    """
    global _shared_address
    current = os.environ.get("RAY_ADDRESS")
    if current is not None and current != _shared_address:
        return  # the user's choice
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        if current is not None:
            del os.environ["RAY_ADDRESS"]
        _shared_address = None
        return
    _shared_address = os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address

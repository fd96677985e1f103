"""vLLM's Ray executor (`--distributed-executor-backend ray`) on the CPU platform.

vLLM 0.32 refuses Ray on CPU: `CpuPlatform.ray_device_key` is empty, Ray
rejects "CPU" as a custom resource name, and each worker actor asks Ray for
its accelerator ids (`get_accelerator_ids()[ray_device_key]`), which Ray only
knows for real accelerators. This module carries the smallest change that
makes `RayExecutorV2` run there (patches/README.md §16):

* CPU workers are placed on a custom Ray resource (`RESOURCE`, set as the
  platform's `ray_device_key` by `arm()`), one unit per rank (a node offers
  as many as ranks it may host: `ray start --resources '{"vllm_cpu": 2}'`);
* the worker actor class answers the accelerator-id lookup with its node id
  and no device ids (a CPU rank is told apart by its local rank, as with mp);
* the cluster is checked for enough of it at start-up, so a cluster
  started without it fails at once instead of waiting 30 minutes for a
  placement group;
* a script's own Ray cluster is shared with an engine core in a child
  process (`share_driver_cluster`).

Importing this module imports no Ray: `ray` is an optional extra, and
vLLM's `ray_executor_v2` cannot even be imported without it. `register()`
runs in every vLLM process and calls `arm()`, which costs an attribute write
and a `sys.meta_path` entry; the patch (`install`) is applied the first time
vLLM imports its Ray executor (only when `--distributed-executor-backend
ray` is selected, or a Ray actor unpickles the plugin's worker class), or at
once where that already happened. GPUs keep vLLM's own path.
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


def _worker_proc_class() -> type:
    """vLLM's Ray worker actor, answering the accelerator-id lookup on CPU.

    Built on first use (it subclasses a class of vLLM's Ray executor) and
    reached as this module's `CpuRayWorkerProc` (module `__getattr__`): Ray
    pickles actor classes by reference, so an actor process finds it here
    by itself.
    """
    cls = globals().get("CpuRayWorkerProc")
    if cls is not None:
        return cls
    import ray
    from vllm.v1.executor import ray_executor_v2

    class CpuRayWorkerProc(ray_executor_v2.RayWorkerProc):  # type: ignore[name-defined]
        def get_node_and_physical_gpu_ids(self) -> tuple[str, list[int]]:
            return ray.get_runtime_context().get_node_id(), []

    CpuRayWorkerProc.__module__ = __name__
    CpuRayWorkerProc.__qualname__ = "CpuRayWorkerProc"  # pickled by reference
    globals()["CpuRayWorkerProc"] = CpuRayWorkerProc
    return CpuRayWorkerProc


def __getattr__(name: str) -> Any:
    if name == "CpuRayWorkerProc":
        return _worker_proc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install() -> None:
    """Idempotent; applied by `arm()` when vLLM imports its Ray executor."""
    from vllm.v1.executor import ray_executor_v2

    worker = _worker_proc_class()
    if ray_executor_v2.RayWorkerProc is worker:
        return
    ray_executor_v2.RayWorkerProc = worker
    ray_executor_v2.initialize_ray_cluster = _checked(ray_executor_v2.initialize_ray_cluster)


def _checked(initialize: Any) -> Any:
    def initialize_ray_cluster(parallel_config: Any, *args: Any, **kwargs: Any) -> Any:
        import ray
        from vllm.platforms import current_platform

        resource = current_platform.ray_device_key  # what arm() set
        if not ray.is_initialized():
            # What vLLM's initialize_ray_cluster does on CPU, done first so
            # the cluster can be checked before the placement group waits.
            ray.init(address=kwargs.get("ray_address"), runtime_env=parallel_config.ray_runtime_env)
        own_group = parallel_config.placement_group or ray.util.get_current_placement_group()
        have = ray.cluster_resources().get(resource, 0)
        if own_group is None and have < parallel_config.world_size:
            raise RuntimeError(
                f"vLLM's Ray executor on CPU places each of the {parallel_config.world_size} "
                f"ranks on the custom Ray resource {resource!r}; this cluster offers {have:g}. "
                f'Start Ray with `ray start --head --resources \'{{"{resource}": '
                f"{parallel_config.world_size}}}'` (or ray.init(resources=...))."
            )
        return initialize(parallel_config, *args, **kwargs)

    return initialize_ray_cluster

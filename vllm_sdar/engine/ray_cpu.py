"""vLLM's Ray executor (`--distributed-executor-backend ray`) on the CPU platform.

vLLM 0.32 refuses Ray on CPU: `CpuPlatform.ray_device_key` is empty, Ray
rejects "CPU" as a custom resource name, and each worker actor asks Ray for
its accelerator ids (`get_accelerator_ids()[ray_device_key]`), which Ray only
knows for real accelerators. This module carries the smallest change that
makes `RayExecutorV2` run there (patches/README.md §16):

* CPU workers are placed on a custom Ray resource (`ray_cpu_hook.RESOURCE`,
  set as the platform's `ray_device_key` by `arm()`), one unit per
  rank (a node offers as many as ranks it may host:
  `ray start --resources '{"vllm_cpu": 2}'`);
* the worker actor class answers the accelerator-id lookup with its node id
  and no device ids (a CPU rank is told apart by its local rank, as with mp);
* the cluster is checked for enough of it at start-up, so a cluster
  started without it fails at once instead of waiting 30 minutes for a
  placement group.

Imports Ray (through vLLM's Ray executor): `register()` never imports this
module; `ray_cpu_hook.arm()` applies `install()` when vLLM imports its Ray
executor, on the CPU platform only (GPUs keep vLLM's own path).
"""

from __future__ import annotations

from typing import Any

from vllm.v1.executor import ray_executor_v2


class CpuRayWorkerProc(ray_executor_v2.RayWorkerProc):
    # At module level: Ray pickles actor classes by reference, so the actor
    # process imports this module, and the override, by itself.
    def get_node_and_physical_gpu_ids(self) -> tuple[str, list[int]]:
        import ray

        return ray.get_runtime_context().get_node_id(), []


def install() -> None:
    """Idempotent; called by `ray_cpu_hook` (CPU platform only)."""
    if ray_executor_v2.RayWorkerProc is CpuRayWorkerProc:
        return
    ray_executor_v2.RayWorkerProc = CpuRayWorkerProc
    ray_executor_v2.initialize_ray_cluster = _checked(ray_executor_v2.initialize_ray_cluster)


def _checked(initialize: Any) -> Any:
    def initialize_ray_cluster(parallel_config: Any, *args: Any, **kwargs: Any) -> Any:
        import ray
        from vllm.platforms import current_platform

        # The hook imports this module, so the resource name comes from the
        # platform attribute the hook set, not from an import of the hook.
        resource = current_platform.ray_device_key
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

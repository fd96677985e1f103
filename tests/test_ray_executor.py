"""vLLM's Ray executor (`distributed_executor_backend="ray"`) with TP=2 on CPU.

The ranks are Ray actors on a local cluster offering the custom resource
the plugin places CPU workers on (vllm_sdar/engine/ray_cpu.py). Greedy tokens must
equal TP=1 and the reference decoder, dense and MoE.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm.v1.executor import ray_executor_v2
from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.engine.ray_cpu import CpuRayWorkerProc
from vllm_sdar.engine.ray_cpu_hook import RESOURCE

from .engine_helpers import assert_matches_reference, generate_ids, sdar_llm
from .ray_helpers import local_ray
from .test_engine_variants import mixed_workload

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_ray(**{RESOURCE: 2}) as ray:
        yield ray


@pytest.fixture(autouse=True)
def _one_core_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # One NUMA node here: pin rank 0 and rank 1 to one core each (as the mp test).
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")


def test_cluster_without_the_resource_fails_at_start(tiny_dense: Path) -> None:
    """A cluster offering no `vllm_cpu`: refused at once, naming the resource.

    Its own short-lived cluster, before the module's (one Ray per machine).
    """
    with (
        local_ray(),
        pytest.raises(RuntimeError, match=RESOURCE),
        sdar_llm(tiny_dense, tensor_parallel_size=2, distributed_executor_backend="ray"),
    ):
        pass


def _tp2_over_ray_matches(model: Path, seed: int, cluster: Any) -> None:
    prompts, ps = mixed_workload(4, n=6, seed=seed)
    with sdar_llm(model) as llm:
        tp1 = [list(o.token_ids) for o in generate_ids(llm, prompts, ps)]
    ref = ReferenceDecoder(model)
    with sdar_llm(model, tensor_parallel_size=2, distributed_executor_backend="ray") as llm:
        executor = llm.llm_engine.engine_core.engine_core.model_executor
        # Both ranks are Ray actors of the plugin's CPU worker class (their
        # run() loop holds them, so they are asked nothing directly).
        assert isinstance(executor, RayExecutorV2)
        assert ray_executor_v2.RayWorkerProc is CpuRayWorkerProc
        assert len(executor.ray_worker_handles) == 2
        assert cluster.available_resources().get(RESOURCE, 0) == 0
        got = assert_matches_reference(llm, ref, prompts, ps)
        group = llm.llm_engine.vllm_config.parallel_config.placement_group
    # vLLM's executor shutdown leaves its placement group; the next engine
    # of this module would wait for the resources it holds.
    cluster.util.remove_placement_group(group)
    assert [list(o.token_ids) for o in got] == tp1


def test_dense_tp2_over_ray(tiny_dense: Path, cluster: Any) -> None:
    _tp2_over_ray_matches(tiny_dense, 2, cluster)


def test_moe_tp2_over_ray(tiny_moe: Path, cluster: Any) -> None:
    _tp2_over_ray_matches(tiny_moe, 4, cluster)

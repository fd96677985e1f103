"""vLLM's Ray executor (`distributed_executor_backend="ray"`) with TP=2 on CPU.

The ranks are Ray actors on a local cluster offering the custom resource
the plugin places CPU workers on (vllm_sdar/engine/ray_cpu.py). Greedy tokens must
equal TP=1 and the reference decoder, dense and MoE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm.v1.executor import ray_executor_v2
from vllm.v1.executor.ray_executor_v2 import RayExecutorV2

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.engine.ray_cpu import RESOURCE, CpuRayWorkerProc

from .engine_helpers import (
    assert_matches_reference,
    generate_ids,
    params,
    prompt_of,
    sdar_llm,
)
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


SCRIPT = """
import json, sys
import ray
from vllm import LLM, SamplingParams

if __name__ == "__main__":
    ray.init(num_cpus=2, resources={"vllm_cpu": 2}, include_dashboard=False)
    llm = LLM(sys.argv[1], dtype="float32", enforce_eager=True, gpu_memory_utilization=0.5,
              max_model_len=512, tensor_parallel_size=2, distributed_executor_backend="ray")
    prompts = json.loads(sys.argv[2])
    params = SamplingParams(max_tokens=9, temperature=0, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    print("TOKENS", json.dumps([list(o.outputs[0].token_ids) for o in outs]), flush=True)
    ray.shutdown()
"""


def test_ray_cluster_started_in_the_script_with_the_engine_in_its_own_process(
    tiny_dense: Path, tmp_path: Path
) -> None:
    """As a Python user calls it: `ray.init(resources={"vllm_cpu": 2})` in the
    script, then `LLM(tensor_parallel_size=2, distributed_executor_backend=
    "ray")` with vLLM's default multiprocessing engine (the engine core a
    child process that must join the script's cluster)."""
    prompts = [prompt_of(n, salt=6) for n in (3, 4, 9)]
    script = tmp_path / "tp2_over_ray.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1", "RAY_worker_niceness": "0"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(script), str(tiny_dense), json.dumps(prompts)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    lines = [line for line in out.stdout.splitlines() if line.startswith("TOKENS ")]
    assert out.returncode == 0 and lines, out.stdout[-2000:] + out.stderr[-4000:]
    ref = ReferenceDecoder(tiny_dense)
    want = [
        ref.generate_one(
            p, RequestSettings.from_params(params(max_tokens=9, ignore_eos=True))
        ).token_ids
        for p in prompts
    ]
    assert json.loads(lines[0].removeprefix("TOKENS ")) == want

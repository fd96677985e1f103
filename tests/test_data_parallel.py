"""vLLM's own data parallelism (`--data-parallel-size 2`, mp backend) serving SDAR.

Two engine cores behind one API server. Greedy outputs must equal the
reference decoder, and both engines must have finished requests. Dense only:
vLLM 0.32's CPU communicator has no `all_gatherv`, which a MoE layer under
DP > 1 needs (NotImplementedError in `naive_dp_ep` for any MoE model).
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.tools.server_process import serve

from .engine_helpers import params, prompt_of

pytestmark = pytest.mark.engine

MODEL = "sdar-dense"
OPTIONS: list[dict[str, Any]] = [
    {},
    {"denoising_steps": 2},
    {"remasking_strategy": "entropy_bounded", "eb_threshold": 7.0},
    {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.25},
]


@pytest.fixture(scope="module")
def server(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("dp")
    shutil.copytree(tiny_dense, workdir / MODEL)
    args = [
        MODEL,
        "--data-parallel-size", "2",
        "--dtype", "float32",
        "--max-model-len", "512",
        "--enforce-eager",
    ]  # fmt: skip
    with serve(args, workdir, timeout=600) as base:
        yield base


def _finished_per_engine(base: str) -> dict[str, float]:
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{"):
            engine = line.split('engine="', 1)[1].split('"', 1)[0]
            counts[engine] = counts.get(engine, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_dp2_equals_reference_on_both_engines(server: str, tiny_dense: Path) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=300)
    ref = ReferenceDecoder(tiny_dense)
    cases = [(prompt_of(n, salt=n), OPTIONS[i % len(OPTIONS)]) for i, n in enumerate(range(1, 9))]

    def one(case: tuple[list[int], dict[str, Any]]) -> list[int]:
        prompt, opts = case
        # Top-level SDAR fields: with DP, vLLM starts one API server process
        # per rank (ApiServer_N), and the fields must be installed there too.
        extra = {"ignore_eos": True, "return_token_ids": True, **opts}
        out = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=10, temperature=0.0, extra_body=extra
        )
        return list(out.choices[0].token_ids)

    with ThreadPoolExecutor(len(cases)) as pool:
        got = list(pool.map(one, cases))
    for (prompt, opts), tokens in zip(cases, got, strict=True):
        want = ref.generate_one(
            prompt, RequestSettings.from_params(params(10, ignore_eos=True, **opts))
        )
        assert tokens == want.token_ids, opts
    engines = _finished_per_engine(server)
    assert sorted(engines) == ["0", "1"] and all(engines.values()), engines


def test_moe_with_dp_is_refused_on_cpu(tiny_moe: Path) -> None:
    """Refused while building the config, before any engine starts."""
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=str(tiny_moe), data_parallel_size=2, enforce_eager=True)
    with pytest.raises(ValueError, match="all_gatherv"):
        args.create_engine_config()

"""A server with several API front-end processes: SDAR request fields, and
SDAR's terms in response metrics (the log line: test_server.py).

`vllm serve --api-server-count 2` parses requests in child processes named
"ApiServer_<i>", not in the main process: the request-field wrapper
(vllm_sdar/serving/request_fields.py) must be installed there too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.tools.server_process import serve

from .engine_helpers import TINY_SERVER_FLAGS, served_copy
from .test_server import MODEL, prompt_ids, reference

pytestmark = pytest.mark.engine
N_REQUESTS = 12


@pytest.fixture(scope="module")
def workdir(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_copy(tiny_dense, tmp_path_factory, MODEL)


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[str]:
    args = [
        MODEL,
        *TINY_SERVER_FLAGS,
        "--api-server-count", "2",
    ]  # fmt: skip
    with serve(args, workdir, timeout=400) as base:
        yield base


def test_sdar_fields_reach_every_front_end(server: str, workdir: Path, tiny_dense: Path) -> None:
    ref = ReferenceDecoder(tiny_dense)
    prompt = prompt_ids(5)
    base = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
    options = {"remasking_strategy": "sequential", "denoising_steps": 2}
    want = reference(ref, prompt, {**base, **options})
    # The options change the output: a dropped field would be visible.
    assert want != reference(ref, prompt, base)
    body = {"model": MODEL, "prompt": prompt, "return_token_ids": True, **base, **options}
    for _ in range(N_REQUESTS):
        # A new connection each time, so the kernel spreads them over both
        # front ends (they share one listening socket).
        with httpx.Client(timeout=120) as client:
            reply = client.post(server + "/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["token_ids"] == want
    # With two front ends the main process parses no requests: every one
    # above went through an ApiServer_<i> child (vLLM prefixes log lines
    # with the process name).
    log = (workdir / "server.log").read_text()
    assert set(re.findall(r"\((ApiServer_\d+) pid=", log)) == {"ApiServer_0", "ApiServer_1"}


def test_sdar_terms_in_response_metrics(server: str) -> None:
    body = {
        "model": MODEL,
        "prompt": prompt_ids(3),  # one open slot in the first block, then 4 + 4
        "max_tokens": 9,
        "temperature": 0.0,
        "ignore_eos": True,
        "remasking_strategy": "low_confidence_static",  # one slot per forward
    }
    reply = httpx.post(server + "/v1/completions", json=body, timeout=120).json()
    spec = reply["metrics"]["speculative_decoding"]
    assert spec["sdar"] == {
        "denoising_forwards": 9,
        "committed_tokens": 9,
        "tokens_per_forward": 1.0,
        "predicted_slots": 1 + (4 + 3 + 2 + 1) * 2,
    }
    # vLLM's framing of the same counts stays: acceptance length = 1 + tokens/forward.
    assert spec["mean_acceptance_length"] == 1 + spec["sdar"]["tokens_per_forward"]

"""A real `vllm-sdar serve` process and the real `openai` client.

The server is started the way a user would, by short name: the tiny
checkpoint sits in a directory called `sdar-4b` (a local directory wins over
the Hub mapping), so the served model name is "sdar-4b". Deployment
defaults are set at serve time with --hf-overrides.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.decoding import Sampling
from vllm_sdar.algorithm.logit_rules import LogitRules
from vllm_sdar.algorithm.reference import ReferenceDecoder, Result
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.tools.server_process import cli, metric_totals, serve, server_env

from .engine_helpers import TINY_SERVER_FLAGS, served_copy

pytestmark = pytest.mark.engine

MODEL = "sdar-4b"
DEPLOY_THRESHOLD = 0.25  # --hf-overrides default, visible in outputs (see test_engine_dense)
B = 4


@pytest.fixture(scope="module")
def workdir(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return served_copy(tiny_dense, tmp_path_factory, MODEL)


@pytest.fixture(scope="module")
def server(workdir: Path) -> Iterator[str]:
    args = [
        MODEL,
        *TINY_SERVER_FLAGS,
        "--hf-overrides", f'{{"confidence_threshold": {DEPLOY_THRESHOLD}}}',
    ]  # fmt: skip
    with serve(args, workdir, timeout=300) as base:
        yield base


def client_of(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return client_of(server)


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


def prompt_ids(length: int, salt: int = 0) -> list[int]:
    rng = random.Random(length * 31 + salt)
    return [rng.randrange(100, 150000) for _ in range(length)]


def reference(ref: ReferenceDecoder, prompt: list[int], body: dict[str, Any]) -> list[int]:
    return reference_result(ref, prompt, body).token_ids


def reference_result(ref: ReferenceDecoder, prompt: list[int], body: dict[str, Any]) -> Result:
    extra = {k: body[k] for k in SdarOptions.KEYS if k in body}
    extra.setdefault("confidence_threshold", DEPLOY_THRESHOLD)
    request = RequestSettings(
        max_tokens=body["max_tokens"],
        sampling=Sampling(
            temperature=body.get("temperature", 0.0),
            top_k=body.get("top_k", 0),
            top_p=body.get("top_p", 1.0),
        ),
        seed=body.get("seed"),
        options=SdarOptions.parse(extra),
        ignore_eos=body.get("ignore_eos", False),
        rules=LogitRules(
            **{k: body[k] for k in ("repetition_penalty", "presence_penalty") if k in body}
        ),
        num_logprobs=body.get("logprobs"),
    )
    return ref.generate_one(prompt, request)


def complete(client: openai.OpenAI, prompt: list[int], **body: Any) -> Any:
    known = {"max_tokens", "temperature", "top_p", "seed", "stop", "n", "stream", "logprobs"}
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    extra["return_token_ids"] = True
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra, **kwargs)


def test_served_under_short_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_matches_reference(client: openai.OpenAI, ref: ReferenceDecoder) -> None:
    for length, body in [
        (1, {}),
        (5, {"denoising_steps": 2}),
        (9, {"remasking_strategy": "entropy_bounded", "eb_threshold": 7.0}),
        (14, {"remasking_strategy": "low_confidence_static", "denoising_steps": 3}),
    ]:
        prompt = prompt_ids(length)
        body = {"max_tokens": 11, "temperature": 0.0, "ignore_eos": True, **body}
        out = complete(client, prompt, **body).choices[0]
        assert list(out.token_ids) == reference(ref, prompt, body), body
        assert out.text == ref.tokenizer.decode(out.token_ids)


def test_seeded_sampling_matches_reference(client: openai.OpenAI, ref: ReferenceDecoder) -> None:
    prompt = prompt_ids(6)
    body = {"max_tokens": 10, "temperature": 0.8, "top_p": 0.9, "seed": 17, "ignore_eos": True}
    out = complete(client, prompt, **body).choices[0]
    assert list(out.token_ids) == reference(ref, prompt, body)


def _stream_chunks(client: openai.OpenAI, prompt: list[int], **body: Any) -> list[Any]:
    return [c.choices[0] for c in complete(client, prompt, stream=True, **body)]


def test_stream_sends_each_token_once_final(client: openai.OpenAI, ref: ReferenceDecoder) -> None:
    prompt = prompt_ids(6)  # 6 = 4 + 2: the first block holds 2 prompt-tail slots
    body = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    for strategy in ("sequential", "low_confidence_dynamic"):
        body["remasking_strategy"] = strategy
        whole = complete(client, prompt, **body).choices[0]
        chunks = _stream_chunks(client, prompt, **body)
        token_chunks = [list(c.token_ids) for c in chunks if c.token_ids]
        assert "".join(c.text for c in chunks) == whole.text
        assert sum(token_chunks, []) == list(whole.token_ids) == reference(ref, prompt, body)
    # Chunk sizes are not asserted here: vLLM's front end merges the deltas
    # a client has not read yet, so a loaded machine sends fewer, larger
    # chunks. That each token leaves the engine on the step that decided it
    # is asserted step by step in tests/test_streaming.py.


def _boundaries(chunks: list[Any]) -> set[int]:
    """Token counts sent after each chunk."""
    ends, total = set(), 0
    for c in chunks:
        total += len(c.token_ids or [])
        ends.add(total)
    return ends


def test_block_streaming_is_one_chunk_per_final_block(client: openai.OpenAI) -> None:
    prompt = prompt_ids(6)
    body = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    whole = complete(client, prompt, **body).choices[0]
    chunks = _stream_chunks(client, prompt, stream_granularity="block", **body)
    token_chunks = [list(c.token_ids) for c in chunks if c.token_ids]
    assert "".join(c.text for c in chunks) == whole.text
    assert sum(token_chunks, []) == list(whole.token_ids)
    # Block boundaries after the tail: 2 generated slots, then 4, 4, 2
    # (max_tokens). A slow client may get blocks merged, never split.
    assert _boundaries(chunks) <= {0, 2, 6, 10, 12}


def test_chat_stream_equals_non_stream(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Say something."}]
    kwargs: dict[str, Any] = dict(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    extra = {"ignore_eos": True, "denoising_steps": 2}
    whole = client.chat.completions.create(**kwargs, extra_body=extra)
    text = whole.choices[0].message.content
    stream = client.chat.completions.create(**kwargs, extra_body=extra, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text and streamed == text


def test_n_and_stop_token_ids(client: openai.OpenAI, ref: ReferenceDecoder) -> None:
    prompt = prompt_ids(5)
    free = reference(ref, prompt, {"max_tokens": 12, "ignore_eos": True})
    stop = free[6]
    out = complete(client, prompt, max_tokens=12, temperature=0.0, stop_token_ids=[stop])
    assert list(out.choices[0].token_ids) == free[: free.index(stop) + 1]
    assert out.choices[0].finish_reason == "stop"
    many = complete(client, prompt, max_tokens=6, temperature=1.0, n=3, seed=3, ignore_eos=True)
    assert len(many.choices) == 3 and len({tuple(c.token_ids) for c in many.choices}) == 3


def test_32_concurrent_streams(server: str, ref: ReferenceDecoder) -> None:
    rng = random.Random(32)
    strategies = ["low_confidence_static", "low_confidence_dynamic", "sequential"]
    jobs = []
    for i in range(32):
        body: dict[str, Any] = {
            "max_tokens": rng.randrange(1, 24),
            "temperature": 0.0 if i % 3 else 0.7,
            "remasking_strategy": strategies[i % 3],
            "denoising_steps": rng.choice([1, 2, 4]),
            "ignore_eos": True,
        }
        if body["temperature"]:
            body["seed"] = i
        jobs.append((prompt_ids(rng.randrange(1, 60), salt=i), body))

    async def run_one(aclient: openai.AsyncOpenAI, prompt: list[int], body: dict) -> list[int]:
        extra = {k: v for k, v in body.items() if k not in ("max_tokens", "temperature", "seed")}
        extra["return_token_ids"] = True
        stream = await aclient.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=body["max_tokens"],
            temperature=body["temperature"],
            seed=body.get("seed"),
            stream=True,
            extra_body=extra,
        )
        ids: list[int] = []
        async for chunk in stream:
            ids += list(chunk.choices[0].token_ids or [])
        return ids

    async def run_all() -> list[list[int]]:
        aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
        return await asyncio.gather(*(run_one(aclient, p, b) for p, b in jobs))

    results = asyncio.run(run_all())
    for (prompt, body), got in zip(jobs, results, strict=True):
        assert got == reference(ref, prompt, body), body


@pytest.mark.parametrize(
    "body,param",
    [
        ({"denoising_steps": 5}, "denoising_steps"),
        ({"remasking_strategy": "zigzag"}, "remasking_strategy"),
        ({"confidence_threshold": 0}, "confidence_threshold"),
        ({"confidence_threshold": 1.01}, "confidence_threshold"),
        ({"eb_threshold": -1}, "eb_threshold"),
        ({"prompt_logprobs": 1}, "prompt_logprobs"),
        # Bad constraints name their field (structured outputs work: test_structured_server).
        ({"structured_outputs": {"regex": "[0-"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "structured_outputs.json",
        ),
    ],
)
def test_invalid_request_is_400_and_server_keeps_serving(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        complete(client, prompt_ids(4), max_tokens=4, **body)
    assert param in str(err.value)
    ok = complete(client, prompt_ids(4), max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(ok.choices[0].token_ids) == 4


# --- logprobs and penalties (issue 15) ---------------------------------------


def test_completion_logprobs_and_penalty_match_reference(
    client: openai.OpenAI, ref: ReferenceDecoder
) -> None:
    prompt = prompt_ids(7)
    body = {"max_tokens": 10, "temperature": 0.0, "ignore_eos": True, "logprobs": 2}
    body["repetition_penalty"] = 1.4
    want = reference_result(ref, prompt, body)
    out = complete(client, prompt, **body).choices[0]
    assert list(out.token_ids) == want.token_ids
    lp = out.logprobs
    assert len(lp.token_logprobs) == len(lp.top_logprobs) == len(want.logprobs) == 10
    for got, top, (ids, values, _) in zip(
        lp.token_logprobs, lp.top_logprobs, want.logprobs, strict=True
    ):
        assert got == pytest.approx(values[0], abs=1e-4)
        # The top 2 plus the chosen token when it is not among them (raw
        # logprobs: the penalty may have moved it down), as vLLM shows them.
        expected = dict(zip(ids, values, strict=True))
        assert sorted(top.values()) == pytest.approx(sorted(expected.values()), abs=1e-4)
    # Streaming: each block's chunk carries its tokens' logprobs.
    chunks = [c.choices[0] for c in complete(client, prompt, stream=True, **body)]
    streamed = [v for c in chunks if c.logprobs for v in c.logprobs.token_logprobs]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert all(len(c.logprobs.token_logprobs) == len(c.token_ids) for c in chunks if c.token_ids)


def test_chat_logprobs_and_top_logprobs(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    ).choices[0]
    content = out.logprobs.content
    assert len(content) == 8
    for entry in content:
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one of its step.
        assert entry.logprob == pytest.approx(max(t.logprob for t in entry.top_logprobs))


def test_prompt_logprobs_400_says_why(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        complete(client, prompt_ids(4), max_tokens=4, prompt_logprobs=1)
    assert "no next-token distribution at prompt positions" in str(err.value)


def _metric(base: str, name: str) -> float:
    return metric_totals(base, [name])[name]


def poll(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Wait (bounded) until `predicate()` holds: /metrics moves asynchronously."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def test_metrics_counters_move(client: openai.OpenAI, server: str) -> None:
    forwards = _metric(server, "vllm:sdar_denoising_forwards_total")
    committed = _metric(server, "vllm:sdar_committed_tokens_total")
    complete(
        client,
        prompt_ids(3),
        max_tokens=9,
        temperature=0.0,
        ignore_eos=True,
        remasking_strategy="low_confidence_static",
    )
    poll(
        lambda: _metric(server, "vllm:sdar_committed_tokens_total") - committed >= 9,
        "the committed-token counter",
    )
    new_forwards = _metric(server, "vllm:sdar_denoising_forwards_total")
    new_committed = _metric(server, "vllm:sdar_committed_tokens_total")
    # Prompt 3: one open slot in the first block, then 4 + 4 (9 = 1 + 4 + 4 tokens).
    assert new_committed - committed == 9
    assert new_forwards - forwards == 1 + 4 + 4  # static, steps = B: one slot per step
    assert _metric(server, "vllm:generation_tokens_total") > 0  # vLLM's own are still there


def test_sdar_log_line(server: str, workdir: Path) -> None:
    """vLLM's periodic stats log gets a line in SDAR's terms beside its own."""
    complete(client_of(server), prompt_ids(3), max_tokens=5, temperature=0.0, ignore_eos=True)
    log = workdir / "server.log"
    poll(
        lambda: "SDAR metrics: denoising forwards:" in log.read_text(),
        "the periodic SDAR log line (every VLLM_LOG_STATS_INTERVAL, 10 s)",
        timeout=60,
    )
    line = next(x for x in log.read_text().splitlines() if "SDAR metrics:" in x)
    assert "tokens per forward:" in line and "committed tokens:" in line


def test_disconnect_mid_stream_aborts_the_request(server: str, client: openai.OpenAI) -> None:
    max_tokens = 480
    body = {
        "model": MODEL,
        "prompt": prompt_ids(8),
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "denoising_steps": 4,
        "remasking_strategy": "low_confidence_static",
    }
    committed = _metric(server, "vllm:sdar_committed_tokens_total")
    seen_running = False
    with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as response:
        for n, line in enumerate(response.iter_lines()):
            # Stats reach /metrics asynchronously: look while reading blocks.
            if line.startswith("data:") and _metric(server, "vllm:num_requests_running") == 1:
                seen_running = True
                break  # leaving the iterator closes the connection: a hang-up
            assert n < 200, "the request should not have finished yet"
    assert seen_running
    poll(
        lambda: (
            _metric(server, "vllm:num_requests_running") == 0
            and _metric(server, "vllm:kv_cache_usage_perc") == 0
        ),
        "the request to leave the engine and free its KV",
    )
    # Aborted, not finished: it stopped before committing all its tokens
    # (a finished request commits max_tokens; nothing else ran meanwhile).
    done = _metric(server, "vllm:sdar_committed_tokens_total") - committed
    assert 0 < done < max_tokens, done
    ok = complete(client, prompt_ids(4), max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(ok.choices[0].token_ids) == 4


def test_offline_short_name_fails_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [cli(), "serve", "sdar-8b"],
        cwd=tmp_path,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "sdar-8b" in last and "JetLM/SDAR-8B-Chat" in last and "unreachable" in last

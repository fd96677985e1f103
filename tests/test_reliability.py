"""Reliability against one real `vllm-sdar serve`: soak, KV pressure, access,
cancellation. (Fuzzing: tests/test_fuzz.py; process faults: tests/test_faults.py.)

The server has an API key, prefix caching, and a KV cache of only
soak.KV_PAGES pages (two max_model_len requests), so every test here also
runs under preemption. Answers are compared with `LLM(...)` in this process
(in-process engine core, ample cache).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from vllm import LLM

from vllm_sdar.tools.llm_shutdown import shutdown_llm
from vllm_sdar.tools.server_process import serve_process

from . import soak

MODEL = soak.MODEL
KEY = "sdar-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def live(
    tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    workdir = tmp_path_factory.mktemp("reliab")
    shutil.copytree(tiny_dense, workdir / MODEL)
    # Another checkpoint on disk: naming it must not load it (test_access).
    shutil.copytree(tiny_dense, workdir / "other-checkpoint")
    with serve_process(soak.server_args(api_key=KEY), workdir, timeout=400) as (base, proc):
        yield base, proc, workdir


@pytest.fixture(scope="module")
def base(live: tuple[str, subprocess.Popen, Path]) -> str:
    return live[0]


@pytest.fixture(scope="module")
def llm(live: tuple[str, subprocess.Popen, Path]) -> Iterator[LLM]:
    # Started after the server is up, so the two engines never start at once.
    engine = LLM(
        model=str(live[2] / MODEL),
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=0.5,
        max_model_len=soak.MAX_MODEL_LEN,
    )
    yield engine
    shutdown_llm(engine)


def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(base + path, json=body, headers=headers or AUTH, timeout=120)


# -- access -----------------------------------------------------------------


GREEDY = {
    "model": MODEL,
    "prompt": [101, 202, 303],
    "max_tokens": 6,
    "temperature": 0,
    "ignore_eos": True,
    "denoising_steps": 2,
    "remasking_strategy": "low_confidence_static",
    "return_token_ids": True,
}


# What may answer without the key: liveness, metrics, version, load, docs.
OPEN_PATHS = {
    "/health", "/ping", "/metrics", "/version", "/load", "/kv_event_sources",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
}  # fmt: skip


@pytest.mark.engine
def test_every_model_endpoint_needs_the_key(base: str) -> None:
    """Regression: `POST /invocations` (outside vLLM's /v1 prefix) ran
    completions without the key; /tokenize, /generative_scoring and the
    elastic-EP admin path were open too."""
    spec = httpx.get(base + "/openapi.json", timeout=30).json()
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    checked = []
    for path, methods in spec["paths"].items():
        if path in OPEN_PATHS:
            continue
        for method in methods:
            body = chat if "chat" in path or "messages" in path else GREEDY
            url = base + path.replace("{response_id}", "resp-1")
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = httpx.request(method.upper(), url, json=body, headers=headers, timeout=30)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text)
            checked.append(f"{method.upper()} {path}")
    for needed in ("POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models",
                   "POST /invocations", "POST /tokenize"):  # fmt: skip
        assert needed in checked
    ok = post(base, "/v1/completions", GREEDY)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 6
    ok = post(base, "/invocations", GREEDY)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["text"]) > 0


def _tree_rss_mib(pid: int) -> float:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


@pytest.mark.engine
def test_other_model_names_are_404_and_load_nothing(
    live: tuple[str, subprocess.Popen, Path],
) -> None:
    base, proc, workdir = live
    log = workdir / "server.log"
    children = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    log_size = log.stat().st_size
    names = [
        str(workdir / "other-checkpoint"),  # a real checkpoint on disk
        "other-checkpoint",
        str(workdir / MODEL),  # the served one's own path is not its name
        "JetLM/SDAR-4B-Chat",
        "sdar-8b",
        "../sdar-4b",
        "sdar-4b ",
    ]
    for name in names:
        chat = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for path, body in [("/v1/completions", {**GREEDY, "model": name}),
                           ("/v1/chat/completions", chat)]:  # fmt: skip
            r = post(base, path, body)
            assert r.status_code == 404, (name, path, r.status_code, r.text)
            assert r.json()["error"]["param"] == "model"  # vLLM hides paths in the text
    new_log = log.read_text()[log_size:]
    assert "Loading" not in new_log and "load_model" not in new_log, new_log[-2000:]
    assert {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} == children
    models = httpx.get(base + "/v1/models", headers=AUTH, timeout=30).json()
    assert [m["id"] for m in models["data"]] == [MODEL]


# -- KV pressure --------------------------------------------------------------


@pytest.mark.engine
def test_kv_pressure_preempts_and_matches_ample_cache(base: str, llm: LLM) -> None:
    """64 concurrent long requests on 8 KV pages of 128 tokens (each request
    needs 1-4): the scheduler must preempt and recompute; answers equal
    LLM(...) on an ample cache, token for token, and the SDAR counters add up
    to the responses' usage."""
    shared = [7000 + i for i in range(256)]  # two full pages: prefix-cache hits
    jobs = []
    for i in range(64):
        # Long prompts, short answers: the prompts fill the pages (prefill is
        # one forward), the answers are what costs time on a CPU.
        body = {
            "model": MODEL,
            "prompt": shared[: 128 * (i % 3)] + [1000 + 37 * i + k for k in range(120 + i)],
            "max_tokens": 8 + i // 2,
            "temperature": 0.0 if i % 2 else 0.8,
            "top_p": 1.0,
            "top_k": -1,
            "ignore_eos": True,
            "remasking_strategy": soak.STRATEGIES[i % len(soak.STRATEGIES)],
            "denoising_steps": (1, 2, 4)[i % 3],
            "return_token_ids": True,
        }
        if body["temperature"]:
            body["seed"] = i
        jobs.append(soak.Job(i, "completion", body))
    before = soak.metrics_text(base)

    async def run_all() -> list[soak.Answer]:
        async with httpx.AsyncClient(base_url=base, timeout=600, headers=AUTH) as client:
            return await asyncio.gather(*(soak.run_job(client, j) for j in jobs))

    answers = asyncio.run(run_all())
    assert not any(soak.wait_idle(base).values())
    time.sleep(1.5)  # the front end records stats asynchronously
    after = soak.metrics_text(base)
    expected = soak.offline_answers(llm, jobs)
    for job, got in zip(jobs, answers, strict=True):
        assert got.status == 200 and got.done, (job.index, got.error)
        assert got.token_ids == expected[job.index].token_ids, job.index
        assert got.texts == expected[job.index].texts, job.index

    def delta(name: str) -> float:
        return soak.metric(after, name) - soak.metric(before, name)

    preemptions = delta("vllm:num_preemptions_total")
    print(f"KV pressure: 64 requests, {preemptions:.0f} preemptions")
    assert preemptions > 0
    assert delta(soak.SDAR_COMMITTED) == sum(a.usage["completion_tokens"] for a in answers)
    assert delta(soak.SDAR_COMMITTED) == delta(soak.GEN_TOKENS)


# -- cancellation -------------------------------------------------------------


def _running_waiting(base: str) -> tuple[float, float]:
    text = soak.metrics_text(base)
    return soak.metric(text, "vllm:num_requests_running"), soak.metric(
        text, "vllm:num_requests_waiting"
    )


def _long_stream(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": [2000 + i * 7 + k for k in range(300)],
        "max_tokens": 200,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "denoising_steps": 4,
        "remasking_strategy": "low_confidence_static",
    }


@pytest.mark.engine
def test_cancelled_requests_free_their_kv(base: str) -> None:
    """Cancelled while queued, during the first block, between blocks, and a
    non-streaming request whose client gave up: none holds KV afterwards."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=120) as client:
        # 500 tokens each, 4 of 8 pages: at most two run, the rest queue.
        holders = [client.stream("POST", "/v1/completions", json=_long_stream(i)) for i in range(4)]
        responses = [h.__enter__() for h in holders]
        deadline = time.monotonic() + 60
        while _running_waiting(base)[1] < 2:
            assert time.monotonic() < deadline, _running_waiting(base)
            time.sleep(0.2)
        # Queued: sent last, so behind the waiting ones (FCFS).
        queued = client.stream("POST", "/v1/completions", json=_long_stream(9))
        queued.__enter__()
        while _running_waiting(base)[1] < 3:
            assert time.monotonic() < deadline, _running_waiting(base)
            time.sleep(0.2)
        queued.__exit__(None, None, None)
        while _running_waiting(base)[1] > 2:
            assert time.monotonic() < deadline, "the queued request was not aborted"
            time.sleep(0.2)
        # Between blocks: a chunk (a final block) arrived, then hang up.
        lines = responses[0].iter_lines()
        while not next(lines).startswith("data:"):
            pass
        for h in holders:
            h.__exit__(None, None, None)
        assert not any(soak.wait_idle(base).values()), "KV held after cancellation"
        # First block denoising: hang up before any chunk (8 forwards per block).
        first = client.stream("POST", "/v1/completions", json=_long_stream(11))
        first.__enter__()
        while _running_waiting(base) == (0.0, 0.0):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.__exit__(None, None, None)
        assert not any(soak.wait_idle(base).values()), "KV held after first-block cancel"
    # Non-streaming: the client closes its connection while the request runs.
    # (A client-side timeout would race the engine: on a quiet machine the
    # tiny model may finish first, so the hang-up is tied to the server state.)
    body = {**_long_stream(13), "stream": False, "max_tokens": 480}
    committed = soak.metric(soak.metrics_text(base), COMMITTED)
    _hang_up_while_running(base, body)
    assert not any(soak.wait_idle(base).values()), "KV held after a non-stream hang-up"
    done = soak.metric(soak.metrics_text(base), COMMITTED) - committed
    assert done < body["max_tokens"], f"the request ran to the end ({done} tokens): not aborted"


COMMITTED = "vllm:sdar_committed_tokens_total"


def _hang_up_while_running(base: str, body: dict[str, Any]) -> None:
    """POST on a raw socket and close it once the server reports it running."""
    url = urllib.parse.urlsplit(base)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + payload)
        deadline = time.monotonic() + 60
        while _running_waiting(base)[0] < 1:
            assert time.monotonic() < deadline, "the non-streaming request never ran"
            time.sleep(0.02)


# -- soak ---------------------------------------------------------------------


@pytest.mark.engine
def test_soak_ci(live: tuple[str, subprocess.Popen, Path], llm: LLM) -> None:
    base, proc, _ = live
    figures = soak.soak(base, proc.pid, llm, "ci", api_key=KEY)
    print("soak (ci):", json.dumps(figures))
    assert figures["requests"] >= 10 and figures["cut_by_client"] > 0
    assert figures["compared_with_llm"] >= min(figures["answered"], 8)
    assert not figures["problems"], figures["problems"]
    # Nothing broken for the next client.
    ok = post(base, "/v1/completions", GREEDY)
    assert ok.status_code == 200 and len(ok.json()["choices"][0]["token_ids"]) == 6


# -- fuzzing ------------------------------------------------------------------

FUZZ_BATCHES = 4
FUZZ_EXAMPLES = 60  # per batch and endpoint
FUZZ_TIMEOUT_S = 60.0  # an answer slower than this counts as a hang
SDAR_FIELDS = ["denoising_steps", "remasking_strategy", "confidence_threshold", "eb_threshold"]
STANDARD_FIELDS = [
    "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "seed", "stop",
    "stop_token_ids", "ignore_eos", "min_tokens", "stream", "logprobs", "echo",
    "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias",
    "stream_options", "response_format", "return_token_ids", "user", "best_of",
    "structured_outputs", "skip_special_tokens", "truncate_prompt_tokens",
]  # fmt: skip
CHAT_ONLY = ["messages", "tools", "tool_choice", "chat_template", "add_generation_prompt"]
MASK_TEXT = "<|MASK|>"


def _values() -> Any:
    from hypothesis import strategies as st

    big = st.integers(min_value=-(2**80), max_value=2**80)
    text = st.text(max_size=40) | st.sampled_from([MASK_TEXT, "", "\x00\x1b[2J", "\ud800"])
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-3, max_value=600),
        big,
        st.floats(allow_nan=True, allow_infinity=True),
        text,
        st.lists(st.integers(min_value=-5, max_value=2**40), max_size=6),
        st.lists(text, max_size=3),
        st.dictionaries(st.text(max_size=8), st.integers() | text, max_size=3),
    )


def _prompts() -> Any:
    from hypothesis import strategies as st

    vocab = 151670
    return st.one_of(
        st.text(max_size=60),
        st.just(MASK_TEXT * 5),
        st.just(""),
        st.just([]),
        st.just("word " * 700),  # over max_model_len
        st.lists(st.integers(min_value=0, max_value=vocab - 1), min_size=1, max_size=20),
        st.lists(st.integers(min_value=-(2**40), max_value=2**40), min_size=1, max_size=5),
        st.lists(st.integers(min_value=100, max_value=150000), min_size=500, max_size=600),
        st.lists(st.text(max_size=10), min_size=1, max_size=3),
        st.just([[1, 2], [3]]),
        st.just([151669] * 6),  # the MASK id itself
    )


def _encode(body: Any) -> bytes:
    # allow_nan: NaN/Infinity reach the server as the literals Python writes;
    # lone surrogates become invalid UTF-8 bytes.
    return json.dumps(body, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _fuzz_cases(chat: bool) -> Any:
    from hypothesis import strategies as st

    path = "/v1/chat/completions" if chat else "/v1/completions"
    base_body: dict[str, Any] = {"model": MODEL, "max_tokens": 4, "temperature": 0}
    if chat:
        base_body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        base_body["prompt"] = [101, 202, 303]
    fields = SDAR_FIELDS + STANDARD_FIELDS + (CHAT_ONLY if chat else ["prompt", "suffix"])
    fields += ["unknown_field_xyz"]
    one = st.tuples(st.sampled_from(fields), _values())
    prompt_mut = (
        st.tuples(st.just("messages"), st.builds(
            lambda c, r: [{"role": r, "content": c}], _prompts(), st.sampled_from(
                ["user", "system", "assistant", "tool", "robot", ""])))
        if chat else st.tuples(st.just("prompt"), _prompts())
    )  # fmt: skip
    mutations = st.lists(one | prompt_mut, min_size=1, max_size=3)
    bodies = st.builds(lambda ms: (ms, _encode({**base_body, **dict(ms)})), mutations)
    raw = st.one_of(
        st.binary(max_size=80),
        st.sampled_from([b"{", b'{"model": ', b"[]", b"null", b'"x"', b"\xff\xfe{}", b""]),
        st.builds(lambda b: _encode(base_body)[:b], st.integers(0, 40)),
    ).map(lambda raw: ([("<raw>", None)], raw))
    return path, st.one_of(bodies, bodies, bodies, raw)


FUZZ_COUNTS: dict[str, int] = {}


@pytest.mark.engine
@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
def test_fuzz_bodies_never_5xx_nor_hang(base: str, llm: LLM, chat: bool) -> None:
    """Random bodies (wrong types and ranges for every SDAR and standard field,
    NaN/inf, huge and negative ints, empty/over-long/MASK/control/invalid-UTF-8
    prompts, out-of-range token ids, malformed JSON, unknown fields): each is
    answered 200 or 4xx with a message, within FUZZ_TIMEOUT_S; after each batch
    a known request still gets LLM(...)'s answer."""
    from hypothesis import HealthCheck, given, seed, settings

    path, cases = _fuzz_cases(chat)
    expected = soak.offline_answers(llm, [soak.Job(0, "completion", {**GREEDY, **{
        "top_p": 1.0, "top_k": -1}})])[0].token_ids[0]  # fmt: skip
    statuses: dict[int, int] = {}
    unnamed: list[str] = []
    client = httpx.Client(base_url=base, headers={**AUTH, "Content-Type": "application/json"})

    def one_case(case: tuple[list[tuple[str, Any]], bytes]) -> None:
        mutations, payload = case
        try:
            r = client.post(path, content=payload, timeout=FUZZ_TIMEOUT_S)
        except httpx.TimeoutException:
            pytest.fail(f"no answer in {FUZZ_TIMEOUT_S} s to {payload[:300]!r}")
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (mutations, payload[:300], r.status_code, r.text[:500])
        if r.status_code >= 400:
            message = json.dumps(r.json()).lower()
            assert len(message) > 20, (payload[:300], message)
            fields = {f for f, _ in mutations}
            # One bad field: the answer names it (the prompt may be named by
            # what is wrong with it: its tokens, length, or input).
            single = len(fields) == 1 and not fields & {"<raw>", "messages", "prompt"}
            if single and not any(f.lower() in message for f in fields):
                unnamed.append(f"{mutations} -> {message[:200]}")
        elif not r.headers.get("content-type", "").startswith("text/event-stream"):
            assert r.json()["choices"], payload[:300]

    for batch in range(FUZZ_BATCHES):
        run = settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(seed(batch)(given(cases)(one_case)))
        run()
        known = post(base, "/v1/completions", GREEDY)
        assert known.status_code == 200
        assert known.json()["choices"][0]["token_ids"] == expected, f"after batch {batch}"
    client.close()
    FUZZ_COUNTS[path] = sum(statuses.values())
    print(f"fuzz {path}: {sum(statuses.values())} cases, statuses {sorted(statuses.items())}")
    assert not unnamed, "4xx not naming the field:\n" + "\n".join(unnamed[:30])
    assert not any(soak.wait_idle(base).values())

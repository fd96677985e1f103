"""SDAR on Ray Serve LLM: two engine replicas behind one OpenAI router.

The deployment is `vllm_sdar.serving.ray_serve.llm_config` (what
`python -m vllm_sdar.serving.ray_serve` runs) on a local Ray cluster; the client is
the real `openai` client. Greedy outputs must equal `LLM(...)` offline for
the same requests, and both replicas must have served some of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from vllm_sdar.serving.ray_serve import build_app, llm_config
from vllm_sdar.tools.server_process import free_port

from .engine_helpers import params, prompt_of, sdar_llm
from .ray_helpers import local_ray

pytestmark = pytest.mark.engine

MODEL = "sdar-tiny"
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 512, "seed": 0}
# (prompt length, SDAR options): each option is sent as a top-level body field.
CASES: list[tuple[int, dict[str, Any]]] = [
    (1, {}),
    (5, {"denoising_steps": 2}),
    (9, {"remasking_strategy": "entropy_bounded", "eb_threshold": 7.0}),
    (14, {"remasking_strategy": "low_confidence_static", "denoising_steps": 3}),
    (6, {"confidence_threshold": 0.25}),
    (3, {"remasking_strategy": "sequential"}),
    (11, {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.5}),
    (7, {}),
]
MAX_TOKENS = 11
CHAT = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def offline(tiny_dense: Path) -> dict[str, Any]:
    """The same requests through `LLM(...)` in this process."""
    with sdar_llm(tiny_dense, **ENGINE) as llm:
        outs = llm.generate(
            [{"prompt_token_ids": prompt_of(n)} for n, _ in CASES],
            [params(max_tokens=MAX_TOKENS, ignore_eos=True, **opts) for _, opts in CASES],
            use_tqdm=False,
        )
        chat = llm.chat(
            CHAT, params(max_tokens=10, ignore_eos=True, denoising_steps=2), use_tqdm=False
        )
    return {
        "completions": [list(o.outputs[0].token_ids) for o in outs],
        "chat": chat[0].outputs[0].text,
    }


@pytest.fixture(scope="module")
def server(tiny_dense: Path, offline: dict[str, Any]) -> Iterator[str]:
    with local_ray() as ray:
        from ray import serve

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = llm_config(str(tiny_dense), model_id=MODEL, engine_kwargs=ENGINE)
        try:
            serve.run(build_app(config), name="sdar", route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            del ray


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=300)


def complete(client: openai.OpenAI, prompt: list[int], **body: Any) -> Any:
    known = {"max_tokens", "temperature", "stream"}
    kwargs = {k: v for k, v in body.items() if k in known}
    extra = {k: v for k, v in body.items() if k not in known}
    extra["return_token_ids"] = True
    return client.completions.create(model=MODEL, prompt=prompt, extra_body=extra, **kwargs)


def _engine_replicas() -> list[Any]:
    """Handles of the engine replica actors (named by Ray Serve)."""
    import ray

    return [
        ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::sdar#LLMServer")
    ]


def _busy_while(replicas: list[Any], running: threading.Event) -> list[int]:
    """Most requests each replica held at once while `running` was set."""
    import ray

    peak = [0] * len(replicas)
    deadline = time.monotonic() + 600
    while running.is_set() and time.monotonic() < deadline:
        now = ray.get([r.get_num_ongoing_requests.remote() for r in replicas])
        peak = [max(p, n) for p, n in zip(peak, now)]
        time.sleep(0.05)
    return peak


def test_served_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completions_equal_offline_on_both_replicas(
    client: openai.OpenAI, offline: dict[str, Any]
) -> None:
    def one(case: tuple[int, dict[str, Any]]) -> list[int]:
        length, opts = case
        body = {"max_tokens": MAX_TOKENS, "temperature": 0.0, "ignore_eos": True, **opts}
        return list(complete(client, prompt_of(length), **body).choices[0].token_ids)

    replicas = _engine_replicas()
    assert len(replicas) == 2
    running = threading.Event()
    running.set()
    # Concurrent, so Serve's router spreads them over the replicas; each
    # replica's own count of requests in flight shows it served some.
    with ThreadPoolExecutor(len(CASES) + 1) as pool:
        watch = pool.submit(_busy_while, replicas, running)
        try:
            got = list(pool.map(one, CASES))
        finally:
            running.clear()
        peak = watch.result()
    assert got == offline["completions"]
    assert all(peak), peak


def test_chat_equals_offline(client: openai.OpenAI, offline: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = dict(model=MODEL, messages=CHAT, max_tokens=10, temperature=0)
    extra = {"ignore_eos": True, "denoising_steps": 2}
    whole = client.chat.completions.create(**kwargs, extra_body=extra)
    assert whole.choices[0].message.content == offline["chat"]
    stream = client.chat.completions.create(**kwargs, extra_body=extra, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == offline["chat"]


def test_stream_granularity(client: openai.OpenAI) -> None:
    prompt = prompt_of(6)  # 6 = 4 + 2: the first block holds 2 prompt-tail slots
    body = {"max_tokens": 12, "temperature": 0.0, "ignore_eos": True}
    body["remasking_strategy"] = "sequential"
    whole = list(complete(client, prompt, **body).choices[0].token_ids)
    for granularity, sizes in [("block", [2, 4, 4, 2]), ("prefix", [1] * 12)]:
        chunks = [
            c.choices[0]
            for c in complete(client, prompt, stream=True, stream_granularity=granularity, **body)
        ]
        token_chunks = [list(c.token_ids) for c in chunks if c.token_ids]
        assert sum(token_chunks, []) == whole
        # block: one chunk per final block (2 generated slots after the tail,
        # then 4, 4, 2 at max_tokens); prefix under sequential: one per step.
        # vLLM's front end merges deltas a client has not read yet, so on a
        # loaded machine chunks may merge, never split.
        ends = [sum(len(t) for t in token_chunks[: i + 1]) for i in range(len(token_chunks))]
        allowed = {sum(sizes[: i + 1]) for i in range(len(sizes))}
        assert set(ends) <= allowed


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"denoising_steps": 0}, "denoising_steps"),
        ({"remasking_strategy": "nope"}, "remasking_strategy"),
    ],
)
def test_bad_sdar_option_is_400_naming_it(
    client: openai.OpenAI, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        complete(client, prompt_of(4), max_tokens=4, **body)
    assert param in str(err.value)
    ok = complete(client, prompt_of(4), max_tokens=4, temperature=0.0, ignore_eos=True)
    assert len(ok.choices[0].token_ids) == 4

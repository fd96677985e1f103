"""LoRA on the server (issue 24): `vllm-sdar serve sdar-addition --enable-lora
--lora-modules subtraction=<the shipped adapter>`, the real `openai` client.

Requests name the adapter as their model; base and adapter requests run
side by side; adapters load and unload at run time
(VLLM_ALLOW_RUNTIME_LORA_UPDATING, vLLM's /v1/load_lora_adapter); a bad
path is refused and the server keeps serving. Answers are checked against
the reference decoder on sdar-addition and on sdar-addition with the
adapter merged in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.convert.evaluate import prompt_ids
from vllm_sdar.convert.lora import merge_adapter
from vllm_sdar.convert.subtraction import Subtraction
from vllm_sdar.convert.toy import DEFAULT_OUT, held_out
from vllm_sdar.convert.toy_lora import DEFAULT_ADAPTER
from vllm_sdar.tools.server_process import serve

pytestmark = pytest.mark.engine

BASE = "sdar-addition"
ADAPTER = "subtraction"
OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [
        BASE,
        "--dtype", "float32",
        "--max-model-len", "256",
        "--enforce-eager",
        "--enable-lora",
        "--max-lora-rank", "16",
        "--max-loras", "2",
        "--lora-modules", f"{ADAPTER}={DEFAULT_ADAPTER}",
    ]  # fmt: skip
    with pytest.MonkeyPatch.context() as env:
        env.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
        with serve(args, tmp_path_factory.mktemp("serve-lora"), timeout=300) as base:
            yield base


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReferenceDecoder]:
    merged = merge_adapter(DEFAULT_OUT, DEFAULT_ADAPTER, tmp_path_factory.mktemp("merged"))
    return {BASE: ReferenceDecoder(DEFAULT_OUT), ADAPTER: ReferenceDecoder(merged)}


def problems() -> dict[str, list[Any]]:
    _, sub = Subtraction(max_digits=3).make_splits(0, 6, 0)
    return {ADAPTER: sub, BASE: held_out(6)}


def expected(ref: ReferenceDecoder, problem: Any) -> list[int]:
    request = RequestSettings(max_tokens=8, options=SdarOptions(**OPTIONS))
    return ref.generate_one(prompt_ids(ref.tokenizer, problem), request).token_ids


def complete(client: openai.OpenAI, model: str, prompt: list[int]) -> list[int]:
    out = client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=8,
        temperature=0.0,
        extra_body={**OPTIONS, "return_token_ids": True},
    )
    return list(out.choices[0].token_ids)


def test_models_list_the_adapter(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {BASE, ADAPTER}
    assert models[ADAPTER].parent == BASE  # type: ignore[attr-defined]


def test_model_name_picks_the_adapter(
    client: openai.OpenAI, refs: dict[str, ReferenceDecoder]
) -> None:
    for model, items in problems().items():
        for problem in items:
            prompt = prompt_ids(refs[model].tokenizer, problem)
            assert complete(client, model, prompt) == expected(refs[model], problem), problem
    # A text prompt: "-" tokenizes to <|unk|>, which the adapter reads as minus.
    problem = problems()[ADAPTER][0]
    text = (
        client.completions.create(
            model=ADAPTER,
            prompt=f"{problem.prompt}=",
            max_tokens=8,
            temperature=0.0,
            extra_body=OPTIONS,
        )
        .choices[0]
        .text
    )
    want = expected(refs[ADAPTER], problem)
    assert text == refs[ADAPTER].tokenizer.decode(want, skip_special_tokens=True)


def test_concurrent_base_and_adapter_requests(
    server: str, refs: dict[str, ReferenceDecoder]
) -> None:
    jobs = [(model, problem) for model, items in problems().items() for problem in items]

    async def go() -> list[list[int]]:
        aclient = openai.AsyncOpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
        calls = [
            aclient.completions.create(
                model=model,
                prompt=prompt_ids(refs[model].tokenizer, problem),
                max_tokens=8,
                temperature=0.0,
                extra_body={**OPTIONS, "return_token_ids": True},
            )
            for model, problem in jobs
        ]
        outs = await asyncio.gather(*calls)
        return [list(o.choices[0].token_ids) for o in outs]

    got = asyncio.run(go())
    assert got == [expected(refs[model], problem) for model, problem in jobs]


def test_runtime_load_unload_and_bad_path(
    server: str, client: openai.OpenAI, refs: dict[str, ReferenceDecoder], tmp_path: Path
) -> None:
    problem = problems()[ADAPTER][0]
    prompt = prompt_ids(refs[ADAPTER].tokenizer, problem)
    load = httpx.post(
        server + "/v1/load_lora_adapter",
        json={"lora_name": "sub2", "lora_path": str(DEFAULT_ADAPTER)},
        timeout=60,
    )
    assert load.status_code == 200, load.text
    assert complete(client, "sub2", prompt) == expected(refs[ADAPTER], problem)

    missing = str(tmp_path / "no-such-adapter")
    bad = httpx.post(
        server + "/v1/load_lora_adapter",
        json={"lora_name": "broken", "lora_path": missing},
        timeout=60,
    )
    assert 400 <= bad.status_code < 500, bad.text
    assert "broken" in bad.text or missing in bad.text
    # Still serving, base and adapters alike.
    assert complete(client, ADAPTER, prompt) == expected(refs[ADAPTER], problem)
    assert "broken" not in {m.id for m in client.models.list().data}

    unload = httpx.post(server + "/v1/unload_lora_adapter", json={"lora_name": "sub2"}, timeout=60)
    assert unload.status_code == 200, unload.text
    with pytest.raises(openai.NotFoundError):
        complete(client, "sub2", prompt)

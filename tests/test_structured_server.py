"""Structured outputs and tool calling through `vllm-sdar serve` and the
real `openai` client (issue 23): response_format (json_object, json_schema),
the structured_outputs fields, chat tool calling with tool_choice
"required" and a named function (streaming and not), and tool_choice
"auto" with the hermes parser. The tiny random-weight dense checkpoint,
with xgrammar and no free whitespace (a random network never closes a
free string); the constraints are finite. Bad constraints: test_server.py.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from vllm_sdar.algorithm.reference import GrammarSpec, ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.tools.server_process import serve

from .engine_helpers import TINY_SERVER_FLAGS, served_copy

pytestmark = pytest.mark.engine

MODEL = "sdar-4b"
STRICT_TOOLS = "VLLM_ENFORCE_STRICT_TOOL_CALLING"
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "c": {"enum": ["red", "green", "blue"]},
    },
    "required": ["n", "c"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"utc": {"type": "boolean"}},
            "required": ["utc"],
            "additionalProperties": False,
        },
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]


@pytest.fixture(scope="module")
def server(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = served_copy(tiny_dense, tmp_path_factory, MODEL)
    args = [
        MODEL,
        *TINY_SERVER_FLAGS,
        "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]  # fmt: skip
    # Named and required tool calls through vLLM's JSON-schema path (the
    # array-of-calls schema), which honours disable_any_whitespace; hermes'
    # default path (xgrammar structural tags, whitespace always free) is the
    # structural_tag kind, run offline in test_engine_structured.py.
    saved = os.environ.get(STRICT_TOOLS)
    os.environ[STRICT_TOOLS] = "0"
    try:
        with serve(args, workdir, timeout=300) as base:
            yield base
    finally:
        if saved is None:
            os.environ.pop(STRICT_TOOLS)
        else:
            os.environ[STRICT_TOOLS] = saved


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("max_tokens", 60)
    kwargs.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, **kwargs)


def assert_schema(value: Any) -> None:
    assert (
        set(value) == {"n", "c"}
        and 0 <= value["n"] <= 99
        and value["c"] in SCHEMA["properties"]["c"]["enum"]
    ), value


def assert_weather_args(arguments: str) -> None:
    args = json.loads(arguments)
    assert set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome"), args
    assert 1 <= args["days"] <= 7, args


def test_completion_structured_outputs_equal_reference(
    client: openai.OpenAI, tiny_dense: Path
) -> None:
    ref = ReferenceDecoder(tiny_dense)
    prompt = [1001, 2002, 3003, 4004, 5005]
    for fields, pattern in [
        ({"regex": r"[0-9]{2,5}"}, r"[0-9]{2,5}"),
        ({"choice": ["alpha", "beta gamma"]}, r"alpha|beta gamma"),
        ({"grammar": 'root ::= ("ab" | "cd") [0-9] "!"'}, r"(ab|cd)[0-9]!"),
    ]:
        out = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=16,
            temperature=0,
            extra_body={"structured_outputs": fields, "return_token_ids": True},
        ).choices[0]
        assert re.fullmatch(pattern, out.text), (fields, out.text)
        spec = GrammarSpec(
            regex=fields.get("regex"),
            choice=tuple(fields["choice"]) if "choice" in fields else None,
            grammar=fields.get("grammar"),
            any_whitespace=False,
        )
        want = ref.generate_one(prompt, RequestSettings(max_tokens=16, structured=spec))
        assert list(out.token_ids) == want.token_ids, fields


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_and_object(client: openai.OpenAI, stream: bool) -> None:
    formats = [
        {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}},
        {"type": "json_object"},
    ]
    for response_format in formats:
        out = chat(client, response_format=response_format, stream=stream)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in out if c.choices)
        else:
            text = out.choices[0].message.content
        value = json.loads(text)
        if response_format["type"] == "json_schema":
            assert_schema(value)
        else:
            assert isinstance(value, dict)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_named_function(client: openai.OpenAI, stream: bool) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    out = chat(client, tools=[WEATHER, TIME], tool_choice=named, stream=stream)
    if stream:
        name, arguments = None, ""
        for chunk in out:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                name = name or (call.function.name if call.function else None)
                arguments += (call.function.arguments or "") if call.function else ""
    else:
        (call,) = out.choices[0].message.tool_calls
        name, arguments = call.function.name, call.function.arguments
    assert name == "get_weather"
    assert_weather_args(arguments)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_required(client: openai.OpenAI, stream: bool) -> None:
    kwargs = dict(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    out = chat(client, stream=stream, **kwargs)
    if stream:
        calls: dict[int, dict[str, str]] = {}
        for chunk in out:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
        (call,) = calls.values()
        name, arguments = call["name"], call["arguments"]
    else:
        (tool_call,) = out.choices[0].message.tool_calls
        name, arguments = tool_call.function.name, tool_call.function.arguments
    assert name in ("get_weather", "get_time")
    if name == "get_weather":
        assert_weather_args(arguments)
    else:
        assert isinstance(json.loads(arguments)["utc"], bool)


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_auto_with_hermes_does_not_break(client: openai.OpenAI, stream: bool) -> None:
    out = chat(client, tools=[WEATHER, TIME], tool_choice="auto", max_tokens=12, stream=stream)
    if stream:
        chunks = list(out)
        assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    else:
        assert out.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The server goes on serving constrained requests.
    ok = chat(client, response_format={"type": "json_schema", "json_schema": {
        "name": "t", "schema": SCHEMA}})  # fmt: skip
    assert_schema(json.loads(ok.choices[0].message.content))

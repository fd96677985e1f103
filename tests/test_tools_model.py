"""The tool-calling pair through the OpenAI SDK (issue 30): `vllm-sdar serve
sdar-tools` (the tool-call parser comes with the packaged name), held-out
problems the model never trained on.

- tool_choice auto, "required" and a named function give calls that parse,
  whose arguments satisfy the tool's schema, and (auto, required) call the
  right tool with the right numbers;
- the two-turn conversation (the call, the tool's result) answers right;
- response_format json_schema gives schema-valid JSON;
- streamed tool calls equal non-streamed ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from vllm_sdar.convert.tools import Problem
from vllm_sdar.convert.toy import held_out
from vllm_sdar.serving.names import PACKAGED
from vllm_sdar.tools.server_process import serve

pytestmark = pytest.mark.engine

MODEL = "sdar-tools"
N = 6  # held-out problems of each turn


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    calls = [p for p in held_out(4 * N, Path(PACKAGED[MODEL])) if p.turn == 1]
    assert len(calls) >= N
    return calls[:N]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    # No tool flags: `vllm-sdar serve sdar-tools` adds hermes itself.
    args = [MODEL, "--dtype", "float32", "--gpu-memory-utilization", "0.5", "--enforce-eager"]
    with serve(args, tmp_path_factory.mktemp("serve-tools"), timeout=300) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0)


def ask(client: openai.OpenAI, problem: Problem, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", [{"role": "user", "content": problem.prompt}])
    kwargs.setdefault("max_tokens", 32)
    return client.chat.completions.create(model=MODEL, tools=problem.tools, temperature=0, **kwargs)


def arguments_of(call: Any) -> dict[str, Any]:
    args = json.loads(call.function.arguments)
    assert set(args) == {"a", "b"} and all(type(v) is int for v in args.values()), args
    return args


@pytest.mark.parametrize("choice", ["auto", "required", "named"])
def test_tool_choices_give_valid_right_calls(
    client: openai.OpenAI, problems: list[Problem], choice: str
) -> None:
    for p in problems:
        tool_choice: Any = choice
        if choice == "named":
            tool_choice = {"type": "function", "function": {"name": p.function}}
        message = ask(client, p, tool_choice=tool_choice).choices[0].message
        assert message.tool_calls and len(message.tool_calls) == 1, (p, message)
        call = message.tool_calls[0]
        assert call.function.name in p.tool_names
        assert call.function.name == p.function, (p.prompt, call)
        assert arguments_of(call) == {"a": p.a, "b": p.b}, (p.prompt, call)


def test_two_turn_conversation_answers_right(
    client: openai.OpenAI, problems: list[Problem]
) -> None:
    for p in problems:
        messages: list[dict[str, Any]] = [{"role": "user", "content": p.prompt}]
        first = ask(client, p, messages=messages).choices[0]
        assert first.finish_reason == "tool_calls", first
        call = first.message.tool_calls[0]
        args = arguments_of(call)
        result = args["a"] + args["b"] if call.function.name == "add" else args["a"] - args["b"]
        messages += [
            first.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": str(result)},
        ]
        second = ask(client, p, messages=messages).choices[0]
        assert second.message.content == str(p.result), (p.prompt, second)
        assert not second.message.tool_calls


def test_response_format_json_schema_is_schema_valid(
    client: openai.OpenAI, problems: list[Problem]
) -> None:
    """The grammar gives the form; the toy was trained to write JSON only
    inside its calls, so the numbers are not the problem's. Its deployment
    (the package's serve flags) gives JSON no free whitespace, which this
    toy would pad with until max_tokens; bounded integers let the grammar
    end the numbers (unbounded, digits run on)."""
    bounded = {"type": "integer", "minimum": -2000, "maximum": 2000}
    schema = {"type": "object", "properties": {"a": bounded, "b": bounded}, "required": ["a", "b"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "ab", "schema": schema}}
    for p in problems:
        out = ask(
            client, p, response_format=response_format, tool_choice="none", max_tokens=64
        ).choices[0]
        assert out.finish_reason == "stop", out
        value = json.loads(out.message.content)
        assert set(value) == {"a", "b"}, value
        assert all(type(v) is int and -2000 <= v <= 2000 for v in value.values()), value


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_streamed_tool_calls_equal_whole_ones(
    client: openai.OpenAI, problems: list[Problem], choice: str
) -> None:
    for p in problems[:3]:
        whole = ask(client, p, tool_choice=choice).choices[0].message.tool_calls
        names: dict[int, str] = {}
        arguments: dict[int, str] = {}
        for chunk in ask(client, p, tool_choice=choice, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
        streamed = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
        assert streamed == [(c.function.name, json.loads(c.function.arguments)) for c in whole]

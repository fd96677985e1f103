"""The default model as a new user serves it (`vllm-sdar serve sdar-addition`,
issue 30): JSON and tool requests on a vocabulary that cannot write JSON
(digits, "+", "=", space, newline) answer 400 naming the field, never 5xx,
and the server goes on serving (the full-vocabulary side, 200 with
schema-valid JSON: test_structured_server.py); the per-response SDAR
counters mean what docs/serving.md says; `vllm-sdar bench serve --model
sdar-addition` runs offline.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from vllm_sdar.serving.cli import with_packaged_defaults
from vllm_sdar.serving.names import PACKAGED
from vllm_sdar.tools.server_process import serve

pytestmark = pytest.mark.engine

MODEL = "sdar-addition"
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    args = [
        MODEL,
        "--dtype", "float32",
        "--gpu-memory-utilization", "0.5",
        "--enforce-eager",
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
    ]  # fmt: skip
    with serve(args, tmp_path_factory.mktemp("serve-json"), timeout=300) as base:
        yield base


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


MESSAGES = [{"role": "user", "content": "123+456"}]
REQUESTS: dict[str, tuple[str, dict[str, Any], str]] = {
    "json_object": ("chat", {"response_format": {"type": "json_object"}}, "json_object"),
    "json_schema": (
        "chat",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": SCHEMA},
            }
        },
        "structured_outputs.json",
    ),
    "structured_outputs.json": (
        "completion",
        {"extra_body": {"structured_outputs": {"json": SCHEMA}}},
        "structured_outputs.json",
    ),
    "tool_choice named": (
        "chat",
        {"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}},
        # hermes constrains a named call with xgrammar's structural tags
        "structured_outputs.structural_tag",
    ),
    "tool_choice required": (
        "chat",
        {"tools": [ADD], "tool_choice": "required"},
        "structured_outputs.structural_tag",
    ),
}


@pytest.mark.parametrize("name", list(REQUESTS))
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_json_request_is_400_naming_the_field(
    client: openai.OpenAI, name: str, stream: bool
) -> None:
    kind, kwargs, field = REQUESTS[name]
    with pytest.raises(openai.APIError) as err:
        if kind == "chat":
            out = client.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, stream=stream, **kwargs
            )
        else:
            out = client.completions.create(
                model=MODEL, prompt="123+456=", max_tokens=16, stream=stream, **kwargs
            )
        if stream:
            list(out)
    if stream and isinstance(err.value, openai.APIError) and not hasattr(err.value, "status_code"):
        # The stream opened (HTTP 200) and carried the error event.
        assert err.value.body["code"] == 400, err.value.body
    else:
        assert err.value.status_code == 400
    assert field in str(err.value) and "vocabulary" in str(err.value)


def test_tool_choice_auto_is_never_5xx_and_the_server_goes_on(client: openai.OpenAI) -> None:
    # The model never writes <tool_call> (its vocabulary has no such token):
    # the answer is plain content.
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[ADD], max_tokens=8, temperature=0
    )
    assert out.choices[0].message.content == "579" and not out.choices[0].message.tool_calls
    plain = client.completions.create(model=MODEL, prompt="123+456=", max_tokens=8, temperature=0)
    assert plain.choices[0].text == "579"


def test_sdar_counters_mean_what_the_docs_say(client: openai.OpenAI) -> None:
    """Slots unmasked after EOS are not output: committed tokens = the
    completion's tokens, tokens per forward = tokens / forwards (docs/serving.md)."""
    for prompt in ("271+828=", "12+34=", "999+1="):
        out = client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=8, temperature=0
        ).model_dump()
        sdar = out["metrics"]["speculative_decoding"]["sdar"]
        tokens = out["usage"]["completion_tokens"]
        assert sdar["committed_tokens"] == tokens, (prompt, sdar, tokens)
        assert sdar["tokens_per_forward"] == tokens / sdar["denoising_forwards"]


def test_bench_serve_with_a_short_name_runs_offline(server: str, tmp_path: Path) -> None:
    """The tokenizer of a packaged model comes from the package, not the Hub."""
    cli = Path(sys.executable).with_name("vllm-sdar")
    out = subprocess.run(
        [str(cli), "bench", "serve", "--model", MODEL, "--base-url", server,
         "--dataset-name", "random", "--random-input-len", "6", "--random-output-len", "4",
         "--num-prompts", "4"],
        cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert re.search(r"Successful requests:\s+4\b", out.stdout), out.stdout[-2000:]


def test_packaged_defaults_on_the_command_line() -> None:
    assert with_packaged_defaults(["bench", "serve", "--model", MODEL])[-2:] == [
        "--tokenizer",
        PACKAGED[MODEL],
    ]
    assert with_packaged_defaults(["bench", "serve", "--model", MODEL, "--tokenizer", "t"]) == [
        "bench", "serve", "--model", MODEL, "--tokenizer", "t",
    ]  # fmt: skip
    tools = with_packaged_defaults(["serve", "sdar-tools"])
    assert tools[:5] == ["serve", "sdar-tools", "--enable-auto-tool-choice",
                         "--tool-call-parser", "hermes"]  # fmt: skip
    assert tools[5] == "--structured-outputs-config" and "disable_any_whitespace" in tools[6]
    own = ["serve", "sdar-tools", "--tool-call-parser", "pythonic"]
    assert with_packaged_defaults(own)[:4] == own and "pythonic" in own
    assert "hermes" not in with_packaged_defaults(own)
    assert with_packaged_defaults(["serve", MODEL]) == ["serve", MODEL]


@pytest.mark.parametrize("value", [False, 7, "json"])
def test_wrong_json_type_is_a_one_line_400_naming_the_field(server: str, value: Any) -> None:
    reply = httpx.post(
        server + "/v1/completions",
        json={"model": MODEL, "prompt": "1+2=", "max_tokens": 4, "structured_outputs": value},
        timeout=60,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "structured_outputs"
    assert error["message"].startswith("structured_outputs must be a JSON object")
    assert "\n" not in error["message"]

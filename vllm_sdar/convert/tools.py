"""The tool-calling toy task: call the right arithmetic tool, then answer.

The request's `tools` always hold `add(a, b)` and `subtract(a, b)`, in any
order, sometimes with other functions beside them. Two turns:

1. user "123+456" -> `<tool_call>{"name": "add", "arguments": {"a": 123,
   "b": 456}}</tool_call>` (hermes' format: served with
   `--tool-call-parser hermes`, vLLM turns it into an OpenAI tool call);
2. the same conversation plus that call and the tool's result ("579") ->
   "579".

A problem is one turn (half of each kind): the model learns both, and the
held-out split scores calls and answers apart. The tool list is rendered
into the prompt (names only, in the request's order), and its order, its
extra functions and their number vary in training, so the model reads the
request rather than a fixed prompt.

Tokenizer: task_base's character-level one plus whole-token words: the
call markers, the JSON fragments of a call and the function names (so a
call is ~15 tokens, not ~60). Chat template (no role tags, as the other
toys): "tools:add,subtract\\n" when the request has tools, the user turn
and "\\n", an assistant turn (content, or its tool calls in hermes' form)
and EOS, a tool result as "=" + result + "\\n".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from transformers import PreTrainedTokenizerFast

from vllm_sdar.convert import task_base

CHARS = '0123456789+-=,:_ \n{}"abcdefghijklmnopqrstuvwxyz'
TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
FUNCTIONS = {"+": "add", "-": "subtract"}
EXTRAS = ("multiply", "divide", "power", "modulo", "get_weather")
WORDS = (
    TOOL_CALL,
    TOOL_CALL_END,
    "tools:",
    '{"name": "',
    '", "arguments": ',
    '{"a": ',
    ', "b": ',
    "}}",
    *FUNCTIONS.values(),
    *EXTRAS,
)
# Room for <|MASK|> and a little more, as the other toys pad theirs.
MODEL_VOCAB_SIZE = 72

CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "tools:"
    "{%- for tool in tools -%}"
    "{{ tool.function.name if tool.function is defined else tool.name }}"
    "{%- if not loop.last -%},{%- endif -%}"
    "{%- endfor -%}"
    "{{ '\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'user' -%}"
    "{{ message.content | trim }}{{ '\\n' }}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- if message.tool_calls -%}"
    "{%- for call in message.tool_calls -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    '<tool_call>{"name": "{{ fn.name }}", "arguments": '
    "{% if fn.arguments is string %}{{ fn.arguments }}{% else %}{{ fn.arguments | tojson }}"
    "{% endif %}"
    "}</tool_call>"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{ (message.content or '') | trim }}"
    "{%- endif -%}"
    "{{ eos_token }}"
    "{%- elif message.role == 'tool' -%}"
    "={{ message.content | trim }}{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

INTEGER = {"type": "integer"}


def tool(name: str) -> dict:
    """An OpenAI function tool taking two integers, a and b."""
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name}(a, b) of two integers",
            "parameters": {
                "type": "object",
                "properties": {"a": INTEGER, "b": INTEGER},
                "required": ["a", "b"],
            },
        },
    }


def call_text(name: str, a: int, b: int) -> str:
    return f'{TOOL_CALL}{{"name": "{name}", "arguments": {{"a": {a}, "b": {b}}}}}{TOOL_CALL_END}'


@dataclass(frozen=True)
class Problem(task_base.Problem):
    a: int
    b: int
    op: str  # "+" or "-"
    tool_names: tuple[str, ...]
    turn: int  # 1: call the tool; 2: answer from its result

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}"

    @property
    def function(self) -> str:
        return FUNCTIONS[self.op]

    @property
    def result(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def answer(self) -> str:
        return call_text(self.function, self.a, self.b) if self.turn == 1 else str(self.result)

    @property
    def tools(self) -> list[dict] | None:
        return [tool(n) for n in self.tool_names]

    def call_message(self) -> dict:
        arguments = {"a": self.a, "b": self.b}
        return {
            "role": "assistant",
            "tool_calls": [
                {"type": "function", "function": {"name": self.function, "arguments": arguments}}
            ],
        }

    def context(self) -> list[dict]:
        user = {"role": "user", "content": self.prompt}
        if self.turn == 1:
            return [user]
        return [user, self.call_message(), {"role": "tool", "content": str(self.result)}]

    def answer_message(self) -> dict:
        if self.turn == 1:
            return self.call_message()
        return {"role": "assistant", "content": self.answer}


def _operand(rng: random.Random, max_digits: int) -> int:
    digits = rng.randint(1, max_digits)
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


@dataclass(frozen=True)
class ToolCalling(task_base.Task):
    """a+b / a-b (operands of 1..max_digits digits) through add / subtract tools."""

    max_digits: int = 3
    max_extras: int = 2
    name = "tools"
    chars = CHARS
    model_vocab_size = MODEL_VOCAB_SIZE

    def sample(self, rng: random.Random) -> Problem:
        names = [*FUNCTIONS.values(), *rng.sample(EXTRAS, rng.randint(0, self.max_extras))]
        rng.shuffle(names)
        return Problem(
            a=_operand(rng, self.max_digits),
            b=_operand(rng, self.max_digits),
            op=rng.choice("+-"),
            tool_names=tuple(names),
            turn=rng.choice((1, 2)),
        )

    @property
    def max_tokens(self) -> int:
        # A call: 2 markers, 5 JSON fragments, the name, 2 numbers; + EOS.
        return 2 * self.max_digits + 16

    def describe(self) -> str:
        return (
            f"call add / subtract on 1..{self.max_digits}-digit operands (tools in any order, "
            f"0..{self.max_extras} other functions), then answer with the tool's result"
        )

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        return task_base.build_tokenizer(CHARS, WORDS, CHAT_TEMPLATE, MODEL_VOCAB_SIZE)

"""The LoRA toy task: subtraction, a new operation for sdar-addition.

"905-97=" -> "808<|endoftext|>" with a >= b (answers are never negative),
operands of 1..max_digits digits drawn as in addition.py.

The adapter must use the base model's tokenizer (vLLM serves every adapter
with the base tokenizer), and the addition toy's character set has no "-":
"-" tokenizes to `<|unk|>`, a token sdar-addition never saw in training.
The adapter learns it as the minus sign; every other character (digits,
"=", EOS) keeps its meaning.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from vllm_sdar.convert import addition, task_base
from vllm_sdar.convert.addition import CHARS, _operand


@dataclass(frozen=True)
class Problem(addition.Problem):
    op: ClassVar[str] = "-"


@dataclass(frozen=True)
class Subtraction(task_base.Task):
    """a-b with a >= b, operands of 1..max_digits digits."""

    max_digits: int = 3
    name = "subtraction"
    chars = CHARS  # the addition toy's tokenizer: "-" is <|unk|>

    def sample(self, rng: random.Random) -> Problem:
        a, b = _operand(rng, self.max_digits), _operand(rng, self.max_digits)
        return Problem(max(a, b), min(a, b))

    @property
    def max_tokens(self) -> int:
        return self.max_digits + 5  # the longest difference has max_digits digits, + EOS

    def describe(self) -> str:
        return f"a-b (a >= b) with 1..{self.max_digits}-digit operands"

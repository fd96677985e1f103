"""The long-answer toy task: sort a string of digits.

"3141592653=" -> "1123345569<|endoftext|>". The answer is as long as the
prompt (min_len..max_len digits, + EOS), so at B = 4 decoding spans many
blocks, and every answer digit is a function of the prompt and its position
alone (the k-th smallest digit), so a block can in principle be filled in
one forward: what parallel decoding needs. A 4-layer model learns it from
scratch in minutes on one CPU thread (python -m vllm_sdar.convert.toy
--task sort).

Tokenizer and chat template: task_base.py. `[{"role": "user", "content":
"312"}]` renders as "312=" and the model answers "123<|endoftext|>".
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from vllm_sdar.convert import task_base

CHARS = "0123456789="


@dataclass(frozen=True)
class Problem(task_base.Problem):
    digits: str

    @property
    def prompt(self) -> str:
        return self.digits

    @property
    def answer(self) -> str:
        return "".join(sorted(self.digits))


@dataclass(frozen=True)
class Sorting(task_base.Task):
    """Sort min_len..max_len random digits (length uniform, digits uniform)."""

    min_len: int = 16
    max_len: int = 32
    name = "sort"
    chars = CHARS

    def __post_init__(self) -> None:
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"bad lengths {self.min_len}..{self.max_len}")

    def sample(self, rng: random.Random) -> Problem:
        n = rng.randint(self.min_len, self.max_len)
        return Problem("".join(rng.choice("0123456789") for _ in range(n)))

    @property
    def max_tokens(self) -> int:
        return self.max_len + 8  # the answer (max_len digits) + EOS, with room

    def describe(self) -> str:
        return f"sort {self.min_len}..{self.max_len} random digits"

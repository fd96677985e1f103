"""The default toy task: multi-digit addition.

"123+4567=" -> "4690<|endoftext|>". Every answer is checkable, every output
digit is a function of the prompt alone (so a block can in principle be
filled in one forward), and a model that solves it fits in a few MB, which
is what lets the project ship a real, trained SDAR checkpoint as its default
model and rebuild it on a laptop CPU. Answers are short (1-4 digits + EOS:
one or two blocks at B = 4); sorting.py is the long-answer task.

Tokenizer and chat template: task_base.py. `[{"role": "user", "content":
"12+30"}]` renders as "12+30=" and the model answers "42<|endoftext|>".
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import PreTrainedTokenizerFast

from vllm_sdar.convert import task_base
from vllm_sdar.convert.task_base import EOS, MODEL_VOCAB_SIZE, UNK  # noqa: F401 (re-exported)

CHARS = "0123456789+= \n"


@dataclass(frozen=True)
class Problem(task_base.Problem):
    """a <op> b (subtraction.py's problems are these with "-")."""

    a: int
    b: int
    op: ClassVar[str] = "+"

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}"

    @property
    def answer(self) -> str:
        return str(self.a + self.b if self.op == "+" else self.a - self.b)


@dataclass(frozen=True)
class Addition(task_base.Task):
    """a+b with operands of 1..max_digits digits."""

    max_digits: int = 3
    name = "addition"
    chars = CHARS

    def sample(self, rng: random.Random) -> Problem:
        return Problem(_operand(rng, self.max_digits), _operand(rng, self.max_digits))

    @property
    def max_tokens(self) -> int:
        return self.max_digits + 5  # the longest sum has max_digits + 1 digits, + EOS

    def describe(self) -> str:
        return f"a+b with 1..{self.max_digits}-digit operands"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer (ids: the characters of CHARS, EOS, UNK)."""
    return task_base.build_tokenizer(CHARS)


def _operand(rng: random.Random, max_digits: int) -> int:
    # Uniform over the digit count first, so short operands are not drowned
    # out by the 90% of numbers below 10**max_digits that have max_digits.
    digits = rng.randint(1, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def sample_problems(rng: random.Random, max_digits: int) -> Iterator[Problem]:
    return Addition(max_digits).problems(rng)  # type: ignore[return-value]


def make_splits(
    n_train: int, n_test: int, max_digits: int, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Train and test problems; no test problem occurs in training (task_base.Task.make_splits)."""
    return Addition(max_digits).make_splits(n_train, n_test, seed)


def write_jsonl(problems: Iterable[Problem], path: Path) -> Path:
    return task_base.write_jsonl(problems, path)


is_correct = task_base.is_correct

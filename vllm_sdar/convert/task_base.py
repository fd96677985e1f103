"""What every toy task shares: a character-level tokenizer and chat template,
problems with a checkable answer and held-out splits.

A task (addition.py, sorting.py) says which characters it uses, how to draw
one random problem, and how long its answers can get; everything else
(tokenizer, JSONL records, train/test splits, exact-match scoring) is here,
so the toy pipeline (toy.py) and the benchmarks treat every task alike. The
tasks import this module; the registry of tasks by name (tasks.py) imports
the tasks, so the imports only go one way.

The tokenizer is a `tokenizers` WordLevel model that splits on every
character, wrapped as a `PreTrainedTokenizerFast`, so `AutoTokenizer` (and
vLLM) load it with no remote code. It has no mask token: adding `<|MASK|>`
is the converter's job, as it is for a real Qwen3 tokenizer.

Chat template: the user turn is the problem, "=" is appended unless the
user already typed it, and the assistant turn is the answer followed by the
EOS token. No role tags: they would be characters the tiny model must learn
to skip, with nothing to gain.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
UNK = "<|unk|>"
# Like Qwen3's embedding (151936 rows for 151669 tokens), the model's
# vocabulary is padded past the tokenizer: the converter then finds a free
# row for <|MASK|> without resizing, exactly as SDAR put it at 151669.
MODEL_VOCAB_SIZE = 24

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] | trim -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ content }}{% if not content.endswith('=') %}={% endif %}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ content }}{{ eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def build_tokenizer(
    chars: str,
    words: tuple[str, ...] = (),
    chat_template: str = CHAT_TEMPLATE,
    model_vocab_size: int = MODEL_VOCAB_SIZE,
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer (ids: the characters of `chars`, EOS, UNK,
    then `words`: strings that are one token each wherever they occur)."""
    if len(chars) + 2 + len(words) >= model_vocab_size:
        raise ValueError(f"{len(chars)} characters leave no free row for <|MASK|>")
    vocab = {c: i for i, c in enumerate(chars)}
    vocab[EOS] = len(vocab)
    vocab[UNK] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # [\s\S] rather than "." so newlines are tokens too.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join back without spaces
    backend.add_special_tokens([EOS, UNK])
    # Not special: they are text (a tool call's markers and JSON), kept in
    # decoded output; matched before the per-character split.
    backend.add_tokens([AddedToken(w, normalized=False) for w in words])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, unk_token=UNK, pad_token=EOS
    )
    tokenizer.chat_template = chat_template
    return tokenizer


class Problem(ABC):
    """One problem: a prompt (the user turn) and its only right answer."""

    @property
    @abstractmethod
    def prompt(self) -> str: ...

    @property
    @abstractmethod
    def answer(self) -> str: ...

    @property
    def tools(self) -> list[dict] | None:
        """The request's tools (OpenAI format), if the task has any."""
        return None

    def context(self) -> list[dict]:
        """The conversation the answer follows."""
        return [{"role": "user", "content": self.prompt}]

    def answer_message(self) -> dict:
        return {"role": "assistant", "content": self.answer}

    def record(self) -> dict:
        """A chat record for the converter's JSONL format."""
        record: dict[str, Any] = {"messages": [*self.context(), self.answer_message()]}
        if self.tools is not None:
            record["tools"] = self.tools
        return record


@dataclass(frozen=True)
class Task(ABC):
    """A family of problems; its fields are the task's parameters (saved in
    eval.json, so the held-out split can be drawn again from them)."""

    name: ClassVar[str]
    chars: ClassVar[str]
    model_vocab_size: ClassVar[int] = MODEL_VOCAB_SIZE

    @abstractmethod
    def sample(self, rng: random.Random) -> Problem:
        """One random problem (problems must be hashable: splits dedupe them)."""

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """Decoding budget: the longest answer plus EOS, with some room."""

    @abstractmethod
    def describe(self) -> str:
        """One line for eval.json and the model card."""

    def build_tokenizer(self) -> PreTrainedTokenizerFast:
        return build_tokenizer(self.chars)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    def problems(self, rng: random.Random) -> Iterator[Problem]:
        while True:
            yield self.sample(rng)

    def make_splits(self, n_train: int, n_test: int, seed: int) -> tuple[list, list]:
        """Train and test problems; no test problem occurs in training.

        The test set is drawn first and then excluded from training, so its
        size is exact and it does not depend on n_train.
        """
        rng = random.Random(seed)
        test: list[Problem] = []
        seen: set[Problem] = set()
        for problem in self.problems(rng):
            if len(test) == n_test:
                break
            if problem not in seen:
                seen.add(problem)
                test.append(problem)
        train = []
        for problem in self.problems(rng):
            if len(train) == n_train:
                break
            if problem not in seen:  # repeats inside training are fine
                train.append(problem)
        return train, test


def write_jsonl(problems: Iterable[Problem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for problem in problems:
            f.write(json.dumps(problem.record()) + "\n")
    return path


def is_correct(problem: Problem, text: str) -> bool:
    """Exact match of the decoded answer (EOS already stripped)."""
    return text.strip() == problem.answer

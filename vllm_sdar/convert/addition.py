"""The toy task: multi-digit addition with a character-level tokenizer.

"123+4567=" -> "4690<|endoftext|>". Every answer is checkable, every output
digit is a function of the prompt alone (so a block can in principle be
filled in one forward), and a model that solves it fits in a few MB, which
is what lets the project ship a real, trained SDAR checkpoint as its default
model and rebuild it on a laptop CPU.

The tokenizer is a `tokenizers` WordLevel model that splits on every
character, wrapped as a `PreTrainedTokenizerFast`, so `AutoTokenizer` (and
vLLM) load it with no remote code. It has no mask token: adding `<|MASK|>`
is the converter's job, as it is for a real Qwen3 tokenizer.

Chat template: the user turn is the problem, "=" is appended unless the
user already typed it, and the assistant turn is the sum followed by the
EOS token. So `[{"role": "user", "content": "12+30"}]` renders as "12+30="
and the model answers "42<|endoftext|>". No role tags: they would be
characters the tiny model must learn to skip, with nothing to gain.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHARS = "0123456789+= \n"
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


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer (ids: the characters of CHARS, EOS, UNK)."""
    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab[EOS] = len(vocab)
    vocab[UNK] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # [\s\S] rather than "." so newlines are tokens too.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join back without spaces
    backend.add_special_tokens([EOS, UNK])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS, unk_token=UNK, pad_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}+{self.b}"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    def record(self) -> dict:
        """A chat record for the converter's JSONL format."""
        return {
            "messages": [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.answer},
            ]
        }


def _operand(rng: random.Random, max_digits: int) -> int:
    # Uniform over the digit count first, so short operands are not drowned
    # out by the 90% of numbers below 10**max_digits that have max_digits.
    digits = rng.randint(1, max_digits)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def sample_problems(rng: random.Random, max_digits: int) -> Iterator[Problem]:
    while True:
        yield Problem(_operand(rng, max_digits), _operand(rng, max_digits))


def make_splits(
    n_train: int, n_test: int, max_digits: int, seed: int
) -> tuple[list[Problem], list[Problem]]:
    """Train and test problems; no test problem occurs in training.

    The test set is drawn first and then excluded from training, so its size
    is exact and it does not depend on n_train.
    """
    rng = random.Random(seed)
    test: list[Problem] = []
    seen: set[Problem] = set()
    for problem in sample_problems(rng, max_digits):
        if len(test) == n_test:
            break
        if problem not in seen:
            seen.add(problem)
            test.append(problem)
    train = []
    for problem in sample_problems(rng, max_digits):
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

"""JSONL records -> token ids plus a per-token "trainable" mask, and batches.

Record formats (one JSON object per line):
- {"messages": [{"role": ..., "content": ...}, ...]}: chat, rendered with the
  tokenizer's own chat template; only assistant turns are trainable.
- {"prompt": ..., "completion": ...}: only the completion (+ EOS) is trainable.
- {"text": ...}: every token (+ EOS) is trainable.

"Trainable" means the same thing for both objectives: the AR loss is taken
on those tokens, and the SDAR objective only ever masks those tokens. The
prompt is never masked because at inference the prompt is never masked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    trainable: list[bool]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.trainable):
            raise ValueError("input_ids and trainable differ in length")


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [b, L] long
    trainable: torch.Tensor  # [b, L] bool: loss / noise positions
    valid: torch.Tensor  # [b, L] bool: False on padding, which nothing may attend to

    @property
    def num_trainable(self) -> int:
        return int(self.trainable.sum())


def _encode(tokenizer: Any, text: str) -> list[int]:
    # Templates and EOS are written out explicitly; the tokenizer must not
    # add a BOS of its own in the middle of a conversation.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(
    tokenizer: Any, messages: Sequence[dict], generation_prompt: bool, tools: Any = None
) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tools=tools, tokenize=False, add_generation_prompt=generation_prompt
    )


def _spans_by_prefix(
    tokenizer: Any, messages: Sequence[dict], full: str, tools: Any = None
) -> list[tuple[int, int]]:
    """Assistant spans when every partial render is a prefix of the full one
    (true of simple templates): exact, whatever the template adds."""
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompted = _render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
        turn = _render(tokenizer, messages[: i + 1], generation_prompt=False, tools=tools)
        if not (full.startswith(turn) and turn.startswith(prompted)):
            raise ValueError("partial renders are not prefixes of the full render")
        spans.append((len(prompted), len(turn)))
    return spans


def _spans_by_header(tokenizer: Any, messages: Sequence[dict], full: str) -> list[tuple[int, int]]:
    """Assistant spans for templates that render history differently from
    the last turn (Qwen3 adds an empty <think></think> only to turns after
    the last user message): each span runs from the end of the assistant
    header (the generation prompt) to the end of the turn's closing text
    (e.g. "<|im_end|>\n"), located in the full render."""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=False)
        prompted = _render(tokenizer, messages[:i], generation_prompt=True)
        turn = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        header = prompted[len(before) :]
        content = str(message.get("content") or "").strip()
        if not (prompted.startswith(before) and turn.startswith(prompted) and header):
            raise ValueError("cannot locate assistant tokens with this chat template")
        tail = turn[turn.rfind(content) + len(content) :] if content else ""
        head = full.find(header, cursor)
        at = full.find(content, head + len(header)) if head >= 0 else -1
        end = at + len(content) + len(tail)
        if head < 0 or at < 0 or full[at + len(content) : end] != tail:
            raise ValueError("cannot locate assistant tokens with this chat template")
        spans.append((head + len(header), end))
        cursor = end
    return spans


def _chat_example(tokenizer: Any, messages: Sequence[dict], tools: Any = None) -> Example:
    """Tokenize the full render (what the model sees at inference) span by
    span, so context / assistant boundaries are exact token boundaries."""
    full = _render(tokenizer, messages, generation_prompt=False, tools=tools)
    try:
        spans = _spans_by_prefix(tokenizer, messages, full, tools)
    except ValueError:
        if tools:
            raise
        spans = _spans_by_header(tokenizer, messages, full)
    if not spans:
        raise ValueError("chat record has no assistant message")
    ids: list[int] = []
    trainable: list[bool] = []
    done = 0
    for start, end in spans:
        for text, is_answer in ((full[done:start], False), (full[start:end], True)):
            seg = _encode(tokenizer, text) if text else []
            ids += seg
            trainable += [is_answer] * len(seg)
        done = end
    seg = _encode(tokenizer, full[done:]) if full[done:] else []
    return Example(ids + seg, trainable + [False] * len(seg))


def tokenize_record(record: dict, tokenizer: Any) -> Example:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token")
    if "messages" in record:
        return _chat_example(tokenizer, record["messages"], record.get("tools"))
    if "prompt" in record and "completion" in record:
        prompt = _encode(tokenizer, record["prompt"])
        completion = _encode(tokenizer, record["completion"]) + [eos]
        return Example(prompt + completion, [False] * len(prompt) + [True] * len(completion))
    if "text" in record:
        ids = _encode(tokenizer, record["text"]) + [eos]
        return Example(ids, [True] * len(ids))
    raise ValueError(f"record has none of messages / prompt+completion / text: {sorted(record)}")


def load_examples(path: str | Path, tokenizer: Any, max_length: int) -> list[Example]:
    """All records of a JSONL file, truncated to max_length tokens."""
    examples = []
    with Path(path).open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = tokenize_record(json.loads(line), tokenizer)
            except ValueError as err:
                raise ValueError(f"{path}:{line_no}: {err}") from err
            ex = Example(ex.input_ids[:max_length], ex.trainable[:max_length])
            if any(ex.trainable):  # truncation can cut away every answer token
                examples.append(ex)
    if not examples:
        raise ValueError(f"{path}: no usable records")
    return examples


def collate(examples: Sequence[Example], block_size: int, fill_id: int, pad_id: int) -> Batch:
    """Right-pad a batch to a whole number of blocks.

    Each example whose last token is trainable is first filled with
    `fill_id` (EOS) up to the end of its block, and the fill is trainable.
    Why: at inference the block holding EOS is only final once every slot is
    unmasked, including slots after EOS; a model trained to put EOS there
    fills them in the same forward instead of spending extra steps on
    tokens that are dropped anyway. With block_size 1 (AR) nothing is filled.
    Padding after that is `valid=False`: never attended to, never trained.
    """
    rows_ids, rows_train = [], []
    for ex in examples:
        ids, train = list(ex.input_ids), list(ex.trainable)
        fill = -len(ids) % block_size
        ids += [fill_id] * fill
        train += [train[-1]] * fill
        rows_ids.append(ids)
        rows_train.append(train)
    length = max(len(r) for r in rows_ids)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    trainable = torch.zeros((len(examples), length), dtype=torch.bool)
    valid = torch.zeros((len(examples), length), dtype=torch.bool)
    for i, (ids, train) in enumerate(zip(rows_ids, rows_train)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        trainable[i, : len(ids)] = torch.tensor(train)
        valid[i, : len(ids)] = True
    return Batch(input_ids, trainable, valid)


def batch_order(num_examples: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of training step `step` (0-based).

    Epoch e is a permutation drawn from a generator seeded with (seed, e), so
    the batch of any step is a pure function of (seed, step): resuming at
    step s sees exactly the data an uninterrupted run would have seen.
    """
    if batch_size > num_examples:
        raise ValueError(f"batch size {batch_size} > {num_examples} examples")
    per_epoch = num_examples // batch_size  # drop the ragged tail of each epoch
    epoch, index = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(num_examples, generator=gen)
    return perm[index * batch_size : (index + 1) * batch_size].tolist()

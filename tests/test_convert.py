"""Paradigm conversion (vllm_sdar.convert): objective, data, training loop,
released format, and the shipped default model."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoTokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from vllm_sdar.algorithm.config import SdarOptions, register_hf_configs
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.convert import addition
from vllm_sdar.convert.__main__ import main as cli_main
from vllm_sdar.convert.addition import Addition
from vllm_sdar.convert.data import Example, collate, tokenize_record
from vllm_sdar.convert.evaluate import answer_ok, prompt_ids
from vllm_sdar.convert.objective import add_noise, hidden_states, sdar_loss, two_stream_mask
from vllm_sdar.convert.sorting import Problem as SortProblem
from vllm_sdar.convert.sorting import Sorting
from vllm_sdar.convert.source import from_qwen3
from vllm_sdar.convert.task_base import MODEL_VOCAB_SIZE, is_correct
from vllm_sdar.convert.tasks import task_from_json
from vllm_sdar.convert.toy import DEFAULT_OUT, Budget, held_out, trained_task
from vllm_sdar.convert.train import ConvertConfig, TrainingInterrupted, convert
from vllm_sdar.tools.tiny import ASSETS as SDAR_TOKENIZER

from .conftest import REPO


def _rows(mask: torch.Tensor) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in mask.tolist()]


# --------------------------------------------------------------- the objective


def test_two_stream_mask_handcrafted() -> None:
    # Columns: noisy positions 0..7, then clean positions 0..7; blocks of 4.
    assert _rows(two_stream_mask(8, 4)) == [
        *["1111000000000000"] * 4,  # noisy block 0: itself only
        *["0000111111110000"] * 4,  # noisy block 1: itself + clean block 0
        *["0000000011110000"] * 4,  # clean block 0: clean block 0
        *["0000000011111111"] * 4,  # clean block 1: clean blocks 0..1
    ]


def test_two_stream_mask_hides_padding() -> None:
    valid = torch.tensor([[True] * 6 + [False] * 2])
    mask = two_stream_mask(8, 4, valid)[0]
    pad_keys = [6, 7, 14, 15]
    assert not mask[:, pad_keys][[i for i in range(16) if i not in pad_keys]].any()
    for q in pad_keys:  # a padded query sees exactly itself: no all-False row
        assert mask[q].nonzero().flatten().tolist() == [q]
    assert mask[12, 8:14].all()  # real clean query in block 1 keeps its keys


def _tiny_qwen3(
    path: Path, vocab_size: int, tie: bool = False, seed: int = 0, moe: bool = False
) -> Path:
    torch.manual_seed(seed)
    config_cls, model_cls = (
        (Qwen3MoeConfig, Qwen3MoeForCausalLM) if moe else (Qwen3Config, Qwen3ForCausalLM)
    )
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16) if moe else {}
    config = config_cls(
        **extra,
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        rope_theta=1_000_000,
        tie_word_embeddings=tie,
    )
    config.architectures = [model_cls.__name__]
    model = model_cls(config)
    with torch.no_grad():  # a wide lm_head: distinct, non-flat logits
        model.lm_head.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    addition.build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # vocab_size == tokenizer size: <|MASK|> has no free row, the converter must grow it.
    return _tiny_qwen3(tmp_path_factory.mktemp("qwen3"), vocab_size=16)


def test_noisy_stream_sees_what_the_decoder_shows(qwen3_dir: Path) -> None:
    """Noisy block j in the 2L forward == a block-causal forward of clean
    blocks < j followed by noisy block j (the decoder's view), and the clean
    stream == a block-causal forward of the clean sequence."""
    model = from_qwen3(qwen3_dir, block_size=4).model.eval()
    mask_id = model.config.mask_token_id
    clean = torch.tensor([[3, 10, 5, 11, 7, 1, 2, 14, 9, 8, 0, 14]])
    noisy = clean.clone()
    noisy[0, [1, 2, 5, 6, 7, 8, 10]] = mask_id
    length = clean.shape[1]
    with torch.no_grad():
        both = hidden_states(
            model,
            torch.cat([noisy, clean], 1),
            torch.arange(length).repeat(2)[None],
            two_stream_mask(length, 4),
        )[0]
        assert torch.allclose(both[length:], model.model(clean, 0, None, 4)[0], atol=1e-5)
        for j in range(3):
            view = torch.cat([clean[:, : 4 * j], noisy[:, 4 * j : 4 * j + 4]], 1)
            expect = model.model(view, 0, None, 4)[0, 4 * j :]
            assert torch.allclose(both[4 * j : 4 * j + 4], expect, atol=1e-5), j


def test_noise_masks_only_trainable_and_every_trained_block() -> None:
    ex = Example(list(range(1, 11)), [False] * 5 + [True] * 5)  # prompt 5, answer 5
    batch = collate([ex] * 64, block_size=4, fill_id=14, pad_id=15)
    noised = add_noise(batch, 4, mask_id=99, eps=1e-3, generator=torch.Generator().manual_seed(0))
    assert not noised.masked[~batch.trainable].any()
    per_block = noised.masked.view(64, 3, 4).any(-1)
    assert per_block[:, 1:].all()  # blocks 1 and 2 hold answer tokens
    assert not per_block[:, 0].any()  # block 0 is all prompt
    assert (noised.noisy == 99).equal(noised.masked)
    again = add_noise(batch, 4, 99, 1e-3, torch.Generator().manual_seed(0))
    assert again.masked.equal(noised.masked)
    # t is per block and the masking rate follows it: heavy noise, many masks.
    assert noised.t.view(64, 3, 4).unique(dim=-1).shape[-1] == 1


def test_weightings_agree_when_every_token_is_masked(qwen3_dir: Path) -> None:
    """At t = 1 every answer token is masked and 1/t = 1, so the ELBO
    (sum CE / t over the trainable count) and the uniform mean coincide; at
    low noise they differ (ELBO scales the few masked tokens by 1/t)."""
    model = from_qwen3(qwen3_dir, block_size=4).model
    mask_id = model.config.mask_token_id
    tok = addition.build_tokenizer()
    problems, _ = addition.make_splits(8, 0, 3, seed=2)
    batch = collate([tokenize_record(p.record(), tok) for p in problems], 4, 14, 14)

    def loss(weighting: str, eps: float) -> float:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return sdar_loss(model, batch, 4, mask_id, gen, eps=eps, weighting=weighting).item()

    assert loss("elbo", 1 - 1e-6) == pytest.approx(loss("uniform", 1 - 1e-6), rel=1e-4)
    assert loss("elbo", 0.05) != pytest.approx(loss("uniform", 0.05), rel=1e-2)
    with pytest.raises(ValueError, match="weighting"):
        loss("1/t", 0.5)


# -------------------------------------------------------------------- the data


def test_chat_loss_only_on_assistant_tokens() -> None:
    tok = addition.build_tokenizer()
    ex = tokenize_record(addition.Problem(123, 4567).record(), tok)
    assert tok.decode(ex.input_ids) == "123+4567=4690<|endoftext|>"
    answer = [i for i, t in zip(ex.input_ids, ex.trainable) if t]
    assert tok.decode(answer) == "4690<|endoftext|>"
    assert ex.trainable == [False] * 9 + [True] * 5


def test_qwen_chat_template_multi_turn_labels() -> None:
    register_hf_configs()  # the vendored config.json has auto_map: never prompt
    tok = AutoTokenizer.from_pretrained(SDAR_TOKENIZER)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    ex = tokenize_record({"messages": messages}, tok)
    spans = [
        tok.decode([i for i, _ in group])
        for trained, group in itertools.groupby(zip(ex.input_ids, ex.trainable), key=lambda p: p[1])
        if trained
    ]
    # History turns render without the think block; the last turn has it,
    # and the model must learn to write it, so it is trained.
    assert spans == ["Hello!<|im_end|>\n", "<think>\n\n</think>\n\n4<|im_end|>\n"]
    full = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(ex.input_ids) == full


def test_prompt_completion_and_text_records() -> None:
    tok = addition.build_tokenizer()
    pc = tokenize_record({"prompt": "1+2=", "completion": "3"}, tok)
    assert pc.trainable == [False] * 4 + [True, True]
    assert pc.input_ids[-1] == tok.eos_token_id
    text = tokenize_record({"text": "12"}, tok)
    assert text.trainable == [True] * 3


def test_collate_fills_answer_block_with_trained_eos() -> None:
    a = Example([1, 2, 3, 4, 5, 6], [False, False, False, True, True, True])
    b = Example([1, 2], [False, True])
    batch = collate([a, b], block_size=4, fill_id=14, pad_id=15)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 14, 14], [1, 2, 14, 14, 15, 15, 15, 15]]
    assert batch.trainable.tolist()[0] == [False] * 3 + [True] * 5
    assert batch.trainable.tolist()[1] == [False, True, True, True] + [False] * 4
    assert batch.valid.tolist()[1] == [True] * 4 + [False] * 4


# ------------------------------------------------------------------ the tasks


def test_sort_problems_answers_and_lengths() -> None:
    task = Sorting(min_len=16, max_len=32)
    assert SortProblem("3141592653").answer == "1123345569"
    assert task.max_tokens >= task.max_len + 1  # the longest answer and its EOS fit
    problems = list(itertools.islice(task.problems(random.Random(5)), 400))
    lengths = {len(p.prompt) for p in problems}
    assert min(lengths) == 16 and max(lengths) == 32  # both ends drawn
    for p in problems:
        assert p.prompt.isdigit() and len(p.answer) == len(p.prompt)
        assert sorted(p.answer) == sorted(p.prompt) and list(p.answer) == sorted(p.answer)
    assert is_correct(problems[0], problems[0].answer + "\n")
    assert not is_correct(problems[0], problems[0].prompt)
    with pytest.raises(ValueError):
        Sorting(min_len=8, max_len=4)


def test_sort_splits_hold_out_the_test_set() -> None:
    task = Sorting(min_len=2, max_len=3)  # a small space, so collisions are frequent
    train, test = task.make_splits(3000, 200, seed=0)
    assert len(train) == 3000 and len(test) == len(set(test)) == 200
    assert not set(train) & set(test)
    # The test split is drawn first: its first n items do not depend on n or n_train.
    assert task.make_splits(0, 50, seed=0)[1] == test[:50]
    assert task.make_splits(10, 200, seed=1)[1] != test


def test_sort_tokenizer_and_chat_template() -> None:
    tok = Sorting().build_tokenizer()
    assert tok.apply_chat_template(
        [{"role": "user", "content": "312"}], tokenize=False, add_generation_prompt=True
    ) == "312="  # fmt: skip
    ex = tokenize_record(SortProblem("9071").record(), tok)
    assert tok.decode(ex.input_ids) == "9071=0179<|endoftext|>"
    assert ex.trainable == [False] * 5 + [True] * 5
    ids = tok("0123456789=")["input_ids"]
    assert ids == list(range(11)) and tok.eos_token_id == 11
    assert len(tok) + 1 <= MODEL_VOCAB_SIZE  # a free row for <|MASK|>


def test_tasks_round_trip_through_eval_json() -> None:
    for task in (Addition(max_digits=2), Sorting(min_len=5, max_len=9)):
        assert task_from_json(json.loads(json.dumps(task.to_json()))) == task
    assert addition.make_splits(0, 30, 3, seed=4)[1] == Addition(3).make_splits(0, 30, 4)[1]


# ------------------------------------------------------- weights and the format


def _assert_same_logits(source: torch.nn.Module, sdar: torch.nn.Module) -> None:
    """At block size 1 the block-causal mask is the causal mask, so the SDAR
    model must reproduce the source's logits exactly (no shift on either side)."""
    ids = torch.tensor([[1, 10, 2, 11, 3, 5, 7]])
    with torch.no_grad():
        expect = source.eval()(input_ids=ids).logits
        got = sdar.eval()(ids, 0, None, 1)
    assert torch.allclose(got, expect, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_weights_transfer_one_to_one(tmp_path: Path, tie: bool) -> None:
    """Same logits as the Qwen3 source at block size 1, tied or not."""
    src = _tiny_qwen3(tmp_path, vocab_size=24, tie=tie)
    converted = from_qwen3(src, block_size=1)
    assert converted.mask_id == 16  # next free id, inside the padded vocabulary
    assert converted.model.config.vocab_size == 24  # no growth needed
    _assert_same_logits(Qwen3ForCausalLM.from_pretrained(src), converted.model)
    assert not converted.model.config.tie_word_embeddings


def test_moe_source_converts_to_sdar_moe(tmp_path: Path, dataset: Path) -> None:
    """Qwen3-MoE -> SDARMoeForCausalLM: the per-expert checkpoint tensors move
    over 1:1 (same logits at block size 1), and the objective trains it."""
    src = _tiny_qwen3(tmp_path / "src", vocab_size=24, moe=True)
    converted = from_qwen3(src, block_size=1)
    assert converted.model.config.model_type == "sdar_moe"
    _assert_same_logits(Qwen3MoeForCausalLM.from_pretrained(src), converted.model)
    out = convert(_config(src, dataset, tmp_path / "sdar", steps=2, save_every=2))
    config = AutoConfig.from_pretrained(out)
    assert config.architectures == ["SDARMoeForCausalLM"] and config.num_experts == 4
    ref = ReferenceDecoder(out)
    result = ref.generate_one([1, 10, 2, 11], RequestSettings(max_tokens=5, ignore_eos=True))
    assert len(result.token_ids) == 5


def _config(qwen3_dir: Path, data: Path, out: Path, **kw) -> ConvertConfig:
    base = dict(model=str(qwen3_dir), data=str(data), out=str(out), block_size=4, steps=6,
                batch_size=8, lr=3e-3, save_every=2, keep_checkpoints=5, seed=7)  # fmt: skip
    return ConvertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train, _ = addition.make_splits(64, 0, 3, seed=1)
    return addition.write_jsonl(train, tmp_path_factory.mktemp("data") / "train.jsonl")


@pytest.fixture(scope="module")
def converted(qwen3_dir: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run, through the command line."""
    out = tmp_path_factory.mktemp("run-a")
    cfg = _config(qwen3_dir, dataset, out)
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(cfg).items() if v is not None]
    assert cli_main(argv) == 0
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_same_weights(converted: Path, qwen3_dir: Path, dataset: Path, tmp_path: Path):
    again = convert(_config(qwen3_dir, dataset, tmp_path / "b"))
    assert _same(_weights(converted), _weights(again))
    other = convert(_config(qwen3_dir, dataset, tmp_path / "c", seed=8))
    assert not _same(_weights(converted), _weights(other))
    # Training moved the weights away from the source.
    source = load_file(qwen3_dir / "model.safetensors")
    key = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(source[key], _weights(converted)[key])


def test_resume_after_interruption(
    converted: Path, qwen3_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted):
        convert(_config(qwen3_dir, dataset, out, stop_after=3))  # step 3 is lost
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-0000002"]
    assert not (out / "model.safetensors").exists()
    with pytest.raises(ValueError, match="different settings"):
        convert(_config(qwen3_dir, dataset, out, lr=1e-3), resume=True)
    convert(_config(qwen3_dir, dataset, out), resume=True)
    assert _same(_weights(converted), _weights(out))
    state = json.loads((out / "checkpoint-0000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and len(state["log"]) == 6


def test_release_format_loads_in_reference_decoder(converted: Path) -> None:
    config = json.loads((converted / "config.json").read_text())
    assert config["model_type"] == "sdar"
    assert config["architectures"] == ["SDARForCausalLM"]
    assert config["block_size"] == 4
    assert config["tie_word_embeddings"] is False
    tok = AutoTokenizer.from_pretrained(converted)
    assert tok.mask_token == "<|MASK|>"
    assert config["mask_token_id"] == tok.mask_token_id == 16
    assert config["vocab_size"] == 24  # grown from 16 to fit the mask, rounded to 8
    assert _weights(converted)["lm_head.weight"].shape == (24, 32)
    gen = json.loads((converted / "generation_config.json").read_text())
    assert tok.eos_token_id in gen["eos_token_id"]
    ref = ReferenceDecoder(converted)
    assert (ref.block_size, ref.mask_id) == (4, 16)
    out = ref.generate_one([1, 10, 2, 11], RequestSettings(max_tokens=6, ignore_eos=True))
    assert len(out.token_ids) == 6 and out.num_forwards >= 2


def test_toy_pipeline_smoke(tmp_path: Path) -> None:
    """The whole miniature (AR from scratch, conversion at B=4 and 8, the
    evaluation table) as a user runs it, at a budget that fits CI."""
    out, work = tmp_path / "model", tmp_path / "work"
    cmd = [sys.executable, "-m", "vllm_sdar.convert.toy", "--smoke"]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode != 0 and "--out" in refused.stderr  # never clobber the asset
    done = subprocess.run(
        [*cmd, "--out", str(out), "--work", str(work)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "eval.json").read_text())
    rows = {
        (r["decoder"], r["block_size"], r["strategy"], r["threshold"]) for r in report["results"]
    }
    assert ("AR greedy", None, None, None) in rows
    for block in (4, 8):
        assert ("SDAR", block, "low_confidence_static", None) in rows
        assert ("SDAR", block, "low_confidence_dynamic", 0.9) in rows
        assert 0 < report["token_ratio"][str(block)] < 1  # a fraction of the AR budget
    for r in report["results"]:
        assert r["problems"] == 20 and 0 <= r["correct"] <= 20
        assert r["forwards"] >= r["denoise_forwards"] > 0
    assert "| AR greedy |" in report["table"] and "| AR greedy |" in done.stdout
    ref = ReferenceDecoder(out)  # the shipped block-4 model, in the released format
    assert ref.block_size == 4 and (work / "sdar-b8" / "model.safetensors").exists()
    parent = tmp_path / "ar-model"  # its AR parent, shipped beside it
    assert AutoConfig.from_pretrained(parent).architectures == ["Qwen3ForCausalLM"]
    assert (parent / "eval.json").read_text() == (out / "eval.json").read_text()


# ---------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def shipped() -> ReferenceDecoder:
    assert DEFAULT_OUT == REPO / "vllm_sdar" / "assets" / "sdar-addition"
    return ReferenceDecoder(DEFAULT_OUT)


def test_shipped_model_is_small_and_complete() -> None:
    config = json.loads((DEFAULT_OUT / "config.json").read_text())
    assert config["model_type"] == "sdar" and config["block_size"] == 4
    assert config["head_dim"] == 64  # vLLM's CPU attention kernel needs >= 32
    assert (DEFAULT_OUT / "model.safetensors").stat().st_size < 8 * 2**20
    tok = AutoTokenizer.from_pretrained(DEFAULT_OUT)
    assert tok.mask_token_id == config["mask_token_id"]
    assert tok.apply_chat_template(
        [{"role": "user", "content": "12+30"}], tokenize=False, add_generation_prompt=True
    ) == "12+30="  # fmt: skip


def test_shipped_model_adds_held_out_problems(shipped: ReferenceDecoder) -> None:
    assert trained_task(DEFAULT_OUT) == Budget().task
    test = held_out(40)
    tok = shipped.tokenizer
    request = RequestSettings(max_tokens=8)  # greedy, default low_confidence_dynamic
    results = [shipped.generate_one(prompt_ids(tok, p), request) for p in test]
    correct = sum(answer_ok(tok, p, r.token_ids, shipped.eos_ids) for p, r in zip(test, results))
    assert correct >= 36, f"{correct}/40"
    tokens = sum(len(r.token_ids) for r in results)
    forwards = sum(r.num_denoise_forwards for r in results)
    assert tokens / forwards > 1.5  # dynamic decoding emits several tokens per forward
    # Static decoding unmasks exactly one token per step: never faster than AR.
    static = RequestSettings(
        max_tokens=8, options=SdarOptions(remasking_strategy="low_confidence_static")
    )
    first = shipped.generate_one(prompt_ids(tok, test[0]), static)
    assert first.num_denoise_forwards >= len(first.token_ids)

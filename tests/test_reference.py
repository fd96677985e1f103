"""The reference decoder on tiny checkpoints: layout, forward counts, stops."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.decoding import Sampling, block_causal_mask
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings


@pytest.fixture(scope="module")
def ref(tiny_dense: Path) -> ReferenceDecoder:
    return ReferenceDecoder(tiny_dense)


def test_tiny_checkpoint_is_deterministic(tmp_path: Path) -> None:
    from vllm_sdar.tools.tiny import TinySpec, build

    spec = TinySpec(hidden_size=64, num_layers=1)
    a = (build(tmp_path / "a", spec) / "model.safetensors").read_bytes()
    b = (build(tmp_path / "b", spec) / "model.safetensors").read_bytes()
    assert a == b


def test_cached_denoise_equals_full_recompute(ref: ReferenceDecoder) -> None:
    """The KV-cached path generate_one runs (prefix stored once, each
    denoising forward over the cache then cropped back) gives the logits of
    one block-causal pass over the whole sequence, at every step."""
    B = ref.block_size
    prompt = list(range(200, 200 + 2 * B))  # two whole blocks, stored
    cache = DynamicCache()
    ref._forward(prompt, 0, cache)
    mask = ref.mask_id
    steps = ([mask] * B, [300, mask, 301, mask][:B], [300, 302, 301, 303][:B])
    for block in steps:
        cached = ref._forward(block, 2 * B, cache)
        cache.crop(-B)  # as generate_one: a denoising forward is never stored
        full = ref.model(torch.tensor([prompt + block]), 0, None, B)[0]
        assert torch.allclose(cached, full[2 * B :], atol=1e-5), block
        assert cache.get_seq_length() == 2 * B


def test_block_causal_forward_ignores_later_blocks(ref: ReferenceDecoder) -> None:
    """One uncached forward: outputs up to a block end do not depend on
    anything after it."""
    prompt = [11, 12, 13, 14, 15, 16]
    result = ref.generate_one(prompt, RequestSettings(max_tokens=6))
    seq = prompt + result.token_ids
    full = ref.model(torch.tensor([seq]), 0, None, ref.block_size)[0]
    part = ref.model(torch.tensor([seq[:8]]), 0, None, ref.block_size)[0]
    assert torch.allclose(full[:8], part, atol=1e-5)
    assert block_causal_mask(0, 8, 8, 4)[4].tolist() == [True] * 8


@pytest.mark.parametrize("prompt_len", [1, 3, 4, 5])
@pytest.mark.parametrize("strategy", ["sequential", "low_confidence_static"])
def test_forward_counts_by_prompt_length(
    ref: ReferenceDecoder, prompt_len: int, strategy: str
) -> None:
    B = ref.block_size
    prompt = list(range(100, 100 + prompt_len))
    req = RequestSettings(
        max_tokens=8, options=SdarOptions(remasking_strategy=strategy), ignore_eos=True
    )
    out = ref.generate_one(prompt, req)
    tail = prompt_len % B
    gen_first = B - tail
    # Blocks needed: first holds gen_first generated slots, then whole blocks.
    blocks = 1 + -(-(8 - gen_first) // B) if gen_first < 8 else 1
    prefill = 1 if prompt_len >= B else 0
    # steps = B, one slot per step. Without the early finish every block
    # takes all its steps: the first gen_first, the others B each.
    whole_blocks = gen_first + (blocks - 1) * B
    if strategy == "sequential":
        # Left to right, the decided prefix grows by one per step, and the
        # request ends on the step that decides its 8th token.
        assert out.num_denoise_forwards == 8
    else:
        # Most confident first: the last block ends once its needed slots
        # lead the block, which may take all of its steps.
        last_needed = (8 - gen_first) % B or B
        assert whole_blocks - (B - last_needed) <= out.num_denoise_forwards <= whole_blocks
    assert out.num_forwards == prefill + out.num_denoise_forwards + (blocks - 1)
    assert len(out.token_ids) == 8 and out.finish_reason == "length"


def test_early_finish_saves_forwards_not_tokens(ref: ReferenceDecoder) -> None:
    # A stop token decided at a block's left ends the request before the
    # block's other slots are decided; the tokens are the ones the block
    # would have given (sequential: slot i is decided at step i).
    prompt = [100, 101, 102, 103]
    sequential = SdarOptions(remasking_strategy="sequential")
    free = ref.generate_one(
        prompt, RequestSettings(max_tokens=8, ignore_eos=True, options=sequential)
    )
    # The first token of the second block not seen before it.
    k = next(i for i in range(4, 8) if free.token_ids[i] not in free.token_ids[:i])
    out = ref.generate_one(
        prompt,
        RequestSettings(
            max_tokens=8,
            stop_token_ids=(free.token_ids[k],),
            options=sequential,
        ),
    )
    assert out.token_ids == free.token_ids[: k + 1]
    assert out.finish_reason == "stop"
    # B = 4 steps for the first block, then one per slot up to slot k - 4.
    assert out.num_denoise_forwards == k + 1
    assert free.num_denoise_forwards == 8


def test_eos_inside_block_is_kept_and_rest_dropped(ref: ReferenceDecoder) -> None:
    prompt = [100, 101, 102, 103, 104]
    free = ref.generate_one(prompt, RequestSettings(max_tokens=12, ignore_eos=True))
    stop_tok = free.token_ids[5]  # inside the second generated block
    out = ref.generate_one(prompt, RequestSettings(max_tokens=12, stop_token_ids=(stop_tok,)))
    first = free.token_ids.index(stop_tok)
    assert out.token_ids == free.token_ids[: first + 1]
    assert out.finish_reason == "stop"


def test_max_tokens_inside_block(ref: ReferenceDecoder) -> None:
    prompt = [100, 101]
    full = ref.generate_one(prompt, RequestSettings(max_tokens=12, ignore_eos=True))
    out = ref.generate_one(prompt, RequestSettings(max_tokens=5, ignore_eos=True))
    assert out.token_ids == full.token_ids[:5] and out.finish_reason == "length"


def test_seeded_sampling_reproducible(ref: ReferenceDecoder) -> None:
    sampling = Sampling(temperature=0.8, top_p=0.9, top_k=40)
    a = ref.generate_one([5, 6, 7], RequestSettings(max_tokens=8, sampling=sampling, seed=11))
    b = ref.generate_one([5, 6, 7], RequestSettings(max_tokens=8, sampling=sampling, seed=11))
    c = ref.generate_one([5, 6, 7], RequestSettings(max_tokens=8, sampling=sampling, seed=12))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_dynamic_threshold_saves_forwards_on_confident_model(ref: ReferenceDecoder) -> None:
    prompt = [100, 101, 102, 103]
    static = ref.generate_one(
        prompt,
        RequestSettings(
            max_tokens=16,
            ignore_eos=True,
            options=SdarOptions(remasking_strategy="low_confidence_static"),
        ),
    )
    low = ref.generate_one(
        prompt,
        RequestSettings(
            max_tokens=16, ignore_eos=True, options=SdarOptions(confidence_threshold=0.05)
        ),
    )
    assert low.num_denoise_forwards < static.num_denoise_forwards


def test_moe_reference_runs(tiny_moe: Path) -> None:
    moe = ReferenceDecoder(tiny_moe)
    out = moe.generate_one([5, 6, 7, 8, 9], RequestSettings(max_tokens=6, ignore_eos=True))
    assert len(out.token_ids) == 6

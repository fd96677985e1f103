"""Engine configurations beyond the default: B=8, MoE, cache settings, TP=2.

Each test starts its own engine (a few seconds in-process); all compare
with the reference decoder token for token under greedy decoding.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from vllm.exceptions import VLLMValidationError

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.engine.engine_setup import fit_kv_pages
from vllm_sdar.tools.tiny import TinySpec

from .conftest import tiny_checkpoint
from .engine_helpers import (
    STRATEGY_OPTIONS,
    assert_matches_reference,
    generate_ids,
    params,
    prompt_of,
    record_preemptions,
    scheduler_of,
    sdar_llm,
    strategy_options,
    tight_kv_llm,
)

pytestmark = pytest.mark.engine


def mixed_workload(block: int, n: int = 8, seed: int = 0) -> tuple[list[list[int]], list[Any]]:
    rng = random.Random(seed)
    lengths = [1, block - 1, block, block + 1, 3 * block + 2]
    prompts, ps = [], []
    options = [strategy_options(s) for s in STRATEGY_OPTIONS]
    for i in range(n):
        prompts.append(prompt_of(lengths[i % len(lengths)] if i < 5 else rng.randrange(1, 60), i))
        ps.append(
            params(
                max_tokens=rng.randrange(block + 1, 3 * block),
                denoising_steps=rng.choice([block, block // 2, 3]),
                ignore_eos=True,
                **options[i % 4],
            )
        )
    return prompts, ps


@pytest.mark.mrv2
def test_block_size_8(tiny_dense_b8: Path) -> None:
    ref = ReferenceDecoder(tiny_dense_b8)
    assert ref.block_size == 8
    prompts, ps = mixed_workload(8, n=10)
    with sdar_llm(tiny_dense_b8) as llm:
        assert_matches_reference(llm, ref, prompts, ps)


def test_block_size_override_via_hf_overrides(tiny_dense: Path) -> None:
    """A -b8 style deployment of a checkpoint whose config says 4."""
    ref = ReferenceDecoder(tiny_dense, block_size=8)
    prompts, ps = mixed_workload(8, n=5, seed=3)
    with sdar_llm(tiny_dense, hf_overrides={"block_size": 8}) as llm:
        assert_matches_reference(llm, ref, prompts, ps)


def test_block_step_cap_ends_the_request(tiny_dense: Path) -> None:
    """The MASK-loop safety net: a block still open after max_block_steps
    forwards ends its request (finish_reason "error", a stop_reason that
    says why), frees it, and the engine keeps serving."""
    ref = ReferenceDecoder(tiny_dense, max_block_steps=2)
    prompt = prompt_of(3)  # one open slot in the first block, then 4
    slow = params(max_tokens=8, ignore_eos=True, denoising_steps=4)
    fast = params(max_tokens=8, ignore_eos=True, denoising_steps=2)
    with sdar_llm(tiny_dense, hf_overrides={"max_block_steps": 2}) as llm:
        capped, ok = assert_matches_reference(llm, ref, [prompt, prompt], [slow, fast])
        # The first block's one slot, then what the capped block had decided
        # at its left after 2 of its 4 steps (final, so already sent).
        assert capped.finish_reason == "error" and 1 <= len(capped.token_ids) <= 3
        assert "sdar_block_not_converged" in str(capped.stop_reason)
        assert ok.finish_reason == "length" and len(ok.token_ids) == 8
        scheduler = scheduler_of(llm)
        assert not scheduler.open_blocks and not scheduler.running


@pytest.mark.mrv2
def test_moe(tiny_moe: Path) -> None:
    ref = ReferenceDecoder(tiny_moe)
    prompts, ps = mixed_workload(4, n=8, seed=1)
    with sdar_llm(tiny_moe) as llm:
        assert_matches_reference(llm, ref, prompts, ps)


def test_prefix_caching_off(tiny_dense: Path) -> None:
    ref = ReferenceDecoder(tiny_dense)
    shared = prompt_of(300, salt=21)
    prompts = [shared + prompt_of(n, salt=22) for n in (1, 4, 6)]
    p = params(max_tokens=9, confidence_threshold=0.25, ignore_eos=True)
    with sdar_llm(tiny_dense, enable_prefix_caching=False) as llm:
        assert not scheduler_of(llm).kv_cache_manager.enable_caching
        assert_matches_reference(llm, ref, prompts, p)


@pytest.mark.mrv2
def test_preemption_and_chunked_prefill(tiny_dense: Path) -> None:
    """A KV cache of 6 pages for 8 long requests: preemption and recompute.

    With max_num_batched_tokens=64, prompts longer than that are prefilled
    in block-aligned chunks before their first denoising step.
    """
    ref = ReferenceDecoder(tiny_dense)
    rng = random.Random(5)
    prompts = [prompt_of(rng.randrange(60, 200), salt=i) for i in range(8)]
    ps = [
        params(max_tokens=rng.randrange(40, 90), confidence_threshold=0.25, ignore_eos=True)
        for _ in prompts
    ]
    with tight_kv_llm(tiny_dense) as llm, record_preemptions(llm) as preempted:
        assert_matches_reference(llm, ref, prompts, ps)
    assert preempted, "the workload was meant to overflow the KV cache"


def test_context_end_inside_a_block(tiny_dense: Path) -> None:
    """max_model_len 510 with B=4: positions 508-509 cannot hold a whole block.

    The deployment keeps whole blocks only (508). A prompt whose first block
    would run past it is refused by vLLM's own length check, naming the
    limit, and the engine goes on; the others stop at the last whole block.
    """
    ref = ReferenceDecoder(tiny_dense)
    with sdar_llm(tiny_dense, max_model_len=510) as llm:
        assert llm.llm_engine.vllm_config.model_config.max_model_len == 508
        for length in (508, 509):
            with pytest.raises(VLLMValidationError, match="508"):
                generate_ids(llm, [prompt_of(length)], params(max_tokens=16, ignore_eos=True))
        prompts = [prompt_of(n) for n in (503, 504, 507)]
        outs = generate_ids(llm, prompts, params(max_tokens=16, ignore_eos=True))
        for prompt, out in zip(prompts, outs, strict=True):
            assert len(prompt) + len(out.token_ids) == 508
            assert out.finish_reason == "length"
        # Cut short by the context, the tokens are still the reference's.
        assert_matches_reference(
            llm, ref, prompts, [params(max_tokens=len(o.token_ids), ignore_eos=True) for o in outs]
        )


@pytest.mark.mrv2
def test_tensor_parallel_2(tiny_dense: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # vLLM's CPU backend binds each rank to a NUMA node by default; this
    # machine has one, so pin rank 0 and rank 1 to one core each.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    prompts, ps = mixed_workload(4, n=6, seed=2)
    ref = ReferenceDecoder(tiny_dense)
    with sdar_llm(tiny_dense, tensor_parallel_size=2, distributed_executor_backend="mp") as llm:
        assert llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size == 2
        assert_matches_reference(llm, ref, prompts, ps)


def test_non_sdar_architecture_is_untouched(tiny_dense: Path) -> None:
    """The same weights served as plain Qwen3 get vLLM's own engine, unchanged."""
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_sdar.engine.scheduler import SdarScheduler

    with sdar_llm(tiny_dense, hf_overrides={"architectures": ["Qwen3ForCausalLM"]}) as llm:
        scheduler = scheduler_of(llm)
        assert type(scheduler) is Scheduler and not isinstance(scheduler, SdarScheduler)
        config = llm.llm_engine.vllm_config
        assert "vllm_sdar" not in config.parallel_config.worker_cls
        assert not config.model_config.logits_processors
        out = llm.generate(
            [{"prompt_token_ids": prompt_of(5)}], params(max_tokens=6), use_tqdm=False
        )
        assert len(out[0].outputs[0].token_ids) == 6
        assert out[0].outputs[0].spec_decode_metrics is None


@pytest.mark.parametrize("block", [16, 32, 64])
def test_released_block_variants_start_with_no_flags(
    block: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """JetLM's -b16 / -b32 / -b64 checkpoints declare block_size in config.json;
    with no --block-size the KV pages fit the block (vLLM's CPU default 128),
    and decoding equals the reference across block edges."""
    model = tiny_checkpoint(f"dense-b{block}", TinySpec(arch="dense", block_size=block, seed=3))
    ref = ReferenceDecoder(model)
    prompts = [prompt_of(n, salt=block) for n in (1, block - 1, block + 3)]
    p = params(max_tokens=block + 5, confidence_threshold=0.25, ignore_eos=True)
    with sdar_llm(model) as llm:
        assert llm.llm_engine.vllm_config.cache_config.block_size % block == 0
        assert_matches_reference(llm, ref, prompts, p)


def test_default_kv_pages_fit_the_block_on_gpus() -> None:
    """The GPU branch of the same rule (never run on a GPU here): vLLM's
    default page (16 in 0.32, 64 in 0.34) is raised to a multiple of B and
    kept as if chosen; a page the user chose is left for support.py to check."""
    for default, block, want in [(16, 4, 16), (16, 32, 32), (16, 64, 64), (64, 32, 64)]:
        cache = SimpleNamespace(block_size=default, user_specified_block_size=False)
        fit_kv_pages(cache, block, on_cpu=False)
        assert cache.block_size == want, (default, block)
        assert cache.user_specified_block_size == (want != default)
    chosen = SimpleNamespace(block_size=16, user_specified_block_size=True)
    fit_kv_pages(chosen, 64, on_cpu=False)
    assert chosen.block_size == 16

"""SdarScheduler without an engine: schedule() and update_from_output() by hand.

As vLLM tests its own scheduler (tests/v1/core/utils.py `create_scheduler`):
a VllmConfig built from a tiny SDAR checkpoint, a KVCacheConfig of a few
pages, the scheduler class constructed directly, `Request`s added, and a
fake runner in place of the model. The fake runner decides the first N
still-masked slots of every open block (token id 1000 + the slot's absolute
position, never a stop id) and answers as the real one does
(engine/batch_step.py `BatchStep.unmask`): per request, the block's open
slots after the step, MASK where still undecided. No forward runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.engine import EngineCoreOutput, FinishReason
from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from vllm_sdar.engine.plan import SdarSchedulerOutput

B = 4  # the tiny_dense checkpoint's block size
FILL = 1000  # decided slot at absolute position p holds FILL + p
STOP = 777  # a stop_token_id (below FILL + any position used here)


def fill(pos: int) -> int:
    return FILL + pos


# -- the scheduler ------------------------------------------------------------


@pytest.fixture
def make_scheduler(tiny_dense: Path) -> Callable[..., Any]:
    """SdarScheduler over hand-made configs (KV pages of `page` tokens)."""
    import vllm_sdar

    vllm_sdar.register()  # SDAR config classes, architectures, config hook
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.v1.structured_output import StructuredOutputManager

    from vllm_sdar.engine.scheduler import SdarScheduler

    def make(
        *, num_pages: int = 64, page: int = 8, budget: int = 64, max_num_seqs: int = 8
    ) -> SdarScheduler:
        max_model_len = 256
        model_config = ModelConfig(
            model=str(tiny_dense), dtype="float32", max_model_len=max_model_len, seed=0
        )
        cache_config = CacheConfig(block_size=page, enable_prefix_caching=False)
        cache_config.num_gpu_blocks = num_pages
        vllm_config = VllmConfig(
            model_config=model_config,
            cache_config=cache_config,
            scheduler_config=SchedulerConfig(
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=budget,
                max_model_len=max_model_len,
                is_encoder_decoder=False,
                enable_chunked_prefill=True,
            ),
        )
        # The plugin's config hook chose the scheduler (engine_setup.configure).
        assert "SdarScheduler" in str(vllm_config.scheduler_config.scheduler_cls)
        spec = FullAttentionSpec(block_size=page, num_kv_heads=1, head_size=64, dtype=torch.float32)
        kv_cache_config = KVCacheConfig(
            num_blocks=num_pages,
            kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)],
        )
        scheduler = SdarScheduler(
            vllm_config=vllm_config,
            kv_cache_config=kv_cache_config,
            structured_output_manager=StructuredOutputManager(vllm_config),
            block_size=page,
            log_stats=True,
        )
        assert scheduler.sdar.block_size == B
        return scheduler

    return make


def add(scheduler: Any, req_id: str, prompt_len: int, **params: Any) -> Request:
    params = {"max_tokens": 64, "temperature": 0.0, **params}
    request = Request(req_id, [100 + i for i in range(prompt_len)], SamplingParams(**params), None)
    scheduler.add_request(request)
    return request


# -- the fake runner ----------------------------------------------------------


def decide_first(plan: Any, n: int) -> list[int]:
    """The plan's open slots after a step that decides the first n masked ones."""
    block = list(plan.block_tokens)
    first_pos = plan.block_start + B - plan.num_logits  # position of block_tokens[0]
    for slot in plan.masked_slots[:n]:
        block[slot] = fill(first_pos + slot)
    return block


def runner_output(output: SdarSchedulerOutput, blocks: dict[str, list[int]]) -> ModelRunnerOutput:
    """The runner's answer: each scheduled request's open slots (none for a
    prompt-only chunk), in the order vLLM lists them."""
    req_ids = list(output.num_scheduled_tokens)
    kwargs: dict[str, Any] = dict(
        req_ids=req_ids, sampled_token_ids=[blocks.get(r, []) for r in req_ids]
    )
    if "req_id_to_index" in {f.name for f in dataclasses.fields(ModelRunnerOutput)}:
        kwargs["req_id_to_index"] = {r: i for i, r in enumerate(req_ids)}  # gone in 0.34
    return ModelRunnerOutput(**kwargs)


def fake_runner(output: SdarSchedulerOutput, n: int | dict[str, int] = 1) -> ModelRunnerOutput:
    """Decide the first n (per request, or for all) masked slots of every open block."""
    blocks = {
        req_id: decide_first(plan, n if isinstance(n, int) else n[req_id])
        for req_id, plan in output.sdar_plans.items()
        if plan.num_logits
    }
    return runner_output(output, blocks)


def engine_step(
    scheduler: Any, n: int | dict[str, int] = 1
) -> tuple[SdarSchedulerOutput, dict[str, EngineCoreOutput]]:
    """schedule() -> fake runner -> update_from_output(); the step's output
    and what it sent each request's client."""
    output = scheduler.schedule()
    return output, sent(scheduler.update_from_output(output, fake_runner(output, n)))


def sent(engine_outputs: dict[int, Any]) -> dict[str, EngineCoreOutput]:
    return {o.request_id: o for outs in engine_outputs.values() for o in outs.outputs}


def first_position(output: SdarSchedulerOutput, req_id: str) -> int:
    """The first position a step schedules for a request (the runner's
    positions are num_computed_tokens + 0 .. num_scheduled - 1)."""
    for new in output.scheduled_new_reqs:
        if new.req_id == req_id:
            return new.num_computed_tokens
    cached = output.scheduled_cached_reqs
    return cached.num_computed_tokens[cached.req_ids.index(req_id)]


# -- tests --------------------------------------------------------------------


def test_computed_tokens_follow_the_open_block(make_scheduler: Callable[..., Any]) -> None:
    """Each step schedules [c, s + B): c is where the final KV ends, s the
    open block's start. After a denoising step c = s; after the block
    becomes final, the next step re-schedules it (the commit) with the next
    block, which starts at s + B."""
    scheduler = make_scheduler()
    prompt_len = 10  # the first block [8, 12) holds 2 prompt tokens, 2 open slots
    request = add(scheduler, "r", prompt_len, max_tokens=14)
    first_start = prompt_len // B * B

    output, _ = engine_step(scheduler)  # the prompt rides along with the first step
    plan = output.sdar_plans["r"]
    assert (plan.block_start, plan.num_logits) == (first_start, prompt_len - first_start)
    assert first_position(output, "r") == 0
    assert output.num_scheduled_tokens == {"r": first_start + B}
    assert request.num_computed_tokens == first_start
    assert list(request.output_token_ids) == [fill(prompt_len)]  # the decided prefix

    starts = [first_start]
    block_was_final = False
    for _ in range(30):
        if request.is_finished():
            break
        open_before = plan.masked_slots
        block_start = plan.block_start
        output, _ = engine_step(scheduler)
        plan = output.sdar_plans["r"]
        first = first_position(output, "r")
        assert output.total_num_scheduled_tokens == output.num_scheduled_tokens["r"]
        assert first + output.num_scheduled_tokens["r"] == plan.block_start + B
        if block_was_final:
            # The committed block rides along with the next block's first step.
            assert plan.block_start == block_start + B
            assert first == block_start
            assert plan.block_tokens == [scheduler.sdar.mask_id] * B
            starts.append(plan.block_start)
        else:
            # The same block again, nothing before it: its KV slots are rewritten.
            assert plan.block_start == block_start and first == block_start
            assert plan.masked_slots == open_before[1:]
        if not request.is_finished():
            assert request.num_computed_tokens == plan.block_start
        block_was_final = not plan.masked_slots[1:]  # this step decided the last one
    else:
        pytest.fail("max_tokens was never reached")
    # Output: every position from the prompt's end on, in order.
    assert list(request.output_token_ids) == [fill(prompt_len + i) for i in range(14)]
    assert starts == [first_start + k * B for k in range(len(starts))] and len(starts) == 4


def test_prefill_chunks_are_block_aligned(make_scheduler: Callable[..., Any]) -> None:
    """With a token budget below the prompt (and not a multiple of B), every
    prompt-only chunk is whole blocks, from and to block boundaries; the
    open block is scheduled only in full."""
    budget = 3 * B - 1
    scheduler = make_scheduler(budget=budget)
    add(scheduler, "running", 2)  # takes part of each step's budget
    long_prompt = 9 * B + 3
    add(scheduler, "long", long_prompt)
    next_pos = 0
    chunks: list[int] = []
    for _ in range(50):
        output, _ = engine_step(scheduler)
        assert output.total_num_scheduled_tokens <= budget
        plan = output.sdar_plans.get("long")
        if plan is None:
            continue  # no room for one whole block this step
        first, num = first_position(output, "long"), output.num_scheduled_tokens["long"]
        assert first == next_pos  # contiguous
        if plan.num_logits:  # the rest of the prompt, then the open block
            assert first + num == plan.block_start + B == long_prompt // B * B + B
            break
        assert num % B == 0 and first % B == 0 and (first + num) % B == 0
        assert first + num <= long_prompt // B * B  # the open block's start at most
        chunks.append(num)
        next_pos = first + num
    else:
        pytest.fail("the long prompt's open block was never scheduled")
    assert len(chunks) >= 2  # the budget forced chunking
    assert any(n < budget // B * B for n in chunks)  # incl. one cut short by "running"


def test_preemption_takes_the_newest_request(make_scheduler: Callable[..., Any]) -> None:
    """Out of KV pages, the newest running request is preempted first (vLLM's
    recompute policy), even when an older one needs the page; a preempted
    request resumes later from position 0 with its final output intact."""
    # Pages of one block; 9 usable (page 0 is vLLM's null block). Each request
    # first takes 3 pages, then one more per block (a whole block per step).
    scheduler = make_scheduler(num_pages=10, page=B)
    requests = {r: add(scheduler, r, 2 * B, max_tokens=3 * B) for r in ("old", "mid", "new")}
    preempted: list[set[str]] = []
    output_at_preemption: dict[str, list[int]] = {}
    resumed: dict[str, Any] = {}
    streamed: dict[str, list[int]] = {r: [] for r in requests}
    for _ in range(20):
        output, outs = engine_step(scheduler, n=B)
        preempted.append(set(output.preempted_req_ids))
        for r in output.preempted_req_ids:
            assert requests[r].status == RequestStatus.PREEMPTED
            output_at_preemption[r] = list(requests[r].output_token_ids)
        for new in output.scheduled_new_reqs:
            if new.req_id in output_at_preemption:
                resumed[new.req_id] = (new.num_computed_tokens, output.sdar_plans[new.req_id])
        for r in output.scheduled_cached_reqs.resumed_req_ids:
            resumed[r] = (first_position(output, r), output.sdar_plans[r])
        for r, out in outs.items():
            streamed[r] += out.new_token_ids
        if all(r.is_finished() for r in requests.values()):
            break
    order = [ids for ids in preempted if ids]
    assert order[:2] == [{"new"}, {"mid"}]  # newest first; "old" never
    assert requests["old"].num_preemptions == 0
    for r in ("mid", "new"):
        first, plan = resumed[r]
        before = output_at_preemption[r]
        # Recompute from 0: the final output goes back in with the open block.
        assert first == 0 and plan.block_start == 2 * B + len(before)
        assert plan.token_ids == before + [scheduler.sdar.mask_id] * B
    expected = [fill(2 * B + i) for i in range(3 * B)]
    for r, request in requests.items():
        assert request.get_finished_reason() == FinishReason.LENGTH
        assert list(request.output_token_ids) == expected  # nothing lost or repeated
        assert streamed[r] == expected
    assert not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == 9


def test_block_streaming_holds_tokens_until_the_block_is_final(
    make_scheduler: Callable[..., Any],
) -> None:
    """stream_granularity="block" sends nothing while the block is partly
    decided and the whole block when final; the default ("prefix") sends
    the decided prefix step by step. Both append the prefix at once."""
    scheduler = make_scheduler()
    prefix = add(scheduler, "prefix", 2 * B, max_tokens=2 * B)
    block = add(
        scheduler, "block", 2 * B, max_tokens=2 * B, extra_args={"stream_granularity": "block"}
    )
    for step in range(2 * B):
        _, outs = engine_step(scheduler, n=1)
        pos = 2 * B + step  # the slot decided this step
        assert outs["prefix"].new_token_ids == [fill(pos)]
        assert list(block.output_token_ids) == list(prefix.output_token_ids)  # final either way
        if (step + 1) % B:  # the block is partly decided
            assert "block" not in outs or not outs["block"].new_token_ids
        else:
            assert outs["block"].new_token_ids == [fill(pos - B + 1 + i) for i in range(B)]
    assert block.is_finished() and prefix.is_finished()

    # Prefix order, not decision order: a slot right of a MASK is not sent.
    add(scheduler, "late", 2 * B)
    output = scheduler.schedule()
    plan = output.sdar_plans["late"]
    right_first = list(plan.block_tokens)
    right_first[1] = fill(2 * B + 1)
    outs = sent(scheduler.update_from_output(output, runner_output(output, {"late": right_first})))
    assert "late" not in outs or not outs["late"].new_token_ids
    output, outs = engine_step(scheduler, n=1)  # slot 0: the prefix is now 2 long
    assert outs["late"].new_token_ids == [fill(2 * B), fill(2 * B + 1)]


@pytest.mark.parametrize("stop_slot", [0, 2])
def test_stop_in_the_decided_prefix_finishes_early(
    make_scheduler: Callable[..., Any], stop_slot: int
) -> None:
    """A stop id decided in an open block ends the request once it is in the
    decided prefix: its slots after the stop stay undecided, its KV is freed."""
    scheduler = make_scheduler(num_pages=16)
    request = add(scheduler, "r", 2 * B, stop_token_ids=[STOP])
    output = scheduler.schedule()
    plan = output.sdar_plans["r"]
    first_pos = plan.block_start
    stop_only = list(plan.block_tokens)
    stop_only[stop_slot] = STOP  # decided, with MASKs before it when stop_slot > 0
    outs = sent(scheduler.update_from_output(output, runner_output(output, {"r": stop_only})))
    if stop_slot:
        assert not request.is_finished() and list(request.output_token_ids) == []
        output, outs = engine_step(scheduler, n=stop_slot)  # fills the slots before it
        assert output.sdar_plans["r"].masked_slots == [s for s in range(B) if s != stop_slot]
    prefix = [fill(first_pos + i) for i in range(stop_slot)] + [STOP]
    assert request.get_finished_reason() == FinishReason.STOP
    assert request.stop_reason == STOP
    assert list(request.output_token_ids) == prefix
    assert outs["r"].new_token_ids == prefix  # nothing was sent before
    assert outs["r"].finish_reason == FinishReason.STOP
    assert stop_slot + 1 < B  # the block was not final
    assert "r" not in scheduler.requests and not scheduler.has_unfinished_requests()
    assert scheduler.kv_cache_manager.block_pool.get_num_free_blocks() == 15
    assert scheduler.schedule().total_num_scheduled_tokens == 0

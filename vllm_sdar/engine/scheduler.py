"""The SDAR scheduler: one denoising step per running request per engine step.

Positions and the KV cache, for a request whose current block starts at s:

- `request.num_computed_tokens` (c) is where the *final* KV ends. Every
  step schedules positions [c, s + B): whatever is not final yet (prompt
  blocks, or the block finished last step: its "commit") followed by the
  current block, so a commit rides along with the next block's first step.
- After a denoising step c becomes s: the block's KV slots are rewritten
  next step and become cache only once the block is final and committed.
- `request.all_token_ids` holds the prompt and the *final* tokens only, so
  vLLM's stop checks, detokenizer and prefix-cache hashing see real tokens.
  A token is final as soon as it is in the open block's decided prefix (no
  strategy changes an unmasked slot): it is appended then, and streamed
  unless the request asked for whole blocks. A stop or max_tokens there
  ends the request at once (early finish). The open block's ids (with
  MASKs) live in `BlockState` and travel to the workers in each step's
  `BlockPlan`; its KV still becomes cache only once the whole block is
  final (prefix-cache pages end on block boundaries, so a page never holds
  a partly decided block).
- A structured request's grammar (vLLM's StructuredOutputManager compiles
  it) is used here only: a bitmask for the block's first masked slot goes
  out with each plan, and only the grammar-valid selected run after it is
  kept (engine/structured.py, docs/structured-outputs.md).

Reused from vLLM's Scheduler (inherited): request bookkeeping, queues,
KV-cache manager, preemption, stop checks, finishing, stats. Replaced:
`schedule()` and `update_from_output()`, the two methods whose token
accounting differs. vLLM dependencies are Scheduler internals of 0.32
(`_preempt_request`, `_make_cached_request_data`, `_update_request_with_output`,
`_free_request`, `make_stats`): see patches/README.md.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.core.sched.utils import remove_all
from vllm.v1.engine import EngineCoreEventType, EngineCoreOutput, EngineCoreOutputs
from vllm.v1.metrics.stats import RequestSpecDecodeMetrics
from vllm.v1.outputs import LogprobsLists, ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.spec_decode.metrics import SpecDecodingStats

from vllm_sdar.algorithm.config import SdarDeployment
from vllm_sdar.algorithm.decoding import BlockDecoding, RuleContext, decided_prefix, first_block
from vllm_sdar.algorithm.logit_rules import LogitRules
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.engine.lora import LoraAdmission
from vllm_sdar.engine.plan import BlockPlan, SdarSchedulerOutput
from vllm_sdar.engine.structured import StructuredOutputs, finish_grammar_errors, grammar_ready
from vllm_sdar.engine.vllm_compat import (
    cached_request_data,
    new_request_data,
    output_index,
    uses_model_runner_v2,
)

# Under vLLM's "vllm" logger so lines reach vLLM's handler and level (a
# plain module logger has no handler and INFO would be dropped).
logger = logging.getLogger("vllm." + __name__)


@dataclass
class BlockState:
    """The open block of one request (scheduler-side, the only copy)."""

    block_start: int
    tokens: list[int]  # the block's open slots (prompt-tail slots excluded)
    decoding: BlockDecoding  # the request's constants, resolved once
    stream_blocks: bool = False  # hold tokens until the block is final
    rules: LogitRules | None = None  # None: no logits transforms
    step: int = 0
    appended: int = 0  # leading slots appended to the request's output (final)
    sent: int = 0  # leading slots sent to the client (<= appended)
    # slot -> (ids, values, rank) from the step that unmasked it (logprobs only)
    logprobs: dict[int, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)

    @property
    def num_logprobs(self) -> int | None:
        return self.decoding.num_logprobs


@dataclass
class _Step:
    """What one schedule() call has decided so far."""

    budget: int  # tokens still schedulable
    now: float
    plans: dict[str, BlockPlan] = field(default_factory=dict)
    num_scheduled: dict[str, int] = field(default_factory=dict)
    pages: dict[str, Any] = field(default_factory=dict)  # KV pages (vLLM's KVCacheBlocks)
    running: list[Request] = field(default_factory=list)
    new: list[Request] = field(default_factory=list)
    resumed: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    def add(self, req_id: str, num_new: int, plan: BlockPlan, pages: Any) -> None:
        self.plans[req_id] = plan
        self.num_scheduled[req_id] = num_new
        self.pages[req_id] = pages
        self.budget -= num_new


class SdarScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sdar = SdarDeployment.from_hf_config(self.vllm_config.model_config.hf_config)
        self.runner_v2 = uses_model_runner_v2(self.vllm_config)
        self.open_blocks: dict[str, BlockState] = {}
        text_config = self.vllm_config.model_config.hf_config.get_text_config()
        self.lora = LoraAdmission(
            self.lora_config, getattr(text_config, "max_position_embeddings", None)
        )
        # Structured outputs (engine/structured.py): grammar masks and acceptance.
        self.structured = StructuredOutputs(self.vllm_config.model_config.get_vocab_size())

    # -- request lifecycle -------------------------------------------------

    def add_request(self, request: Request) -> None:
        params = request.sampling_params
        if params is None:
            raise ValueError("SDAR serves generation requests only")
        B = self.sdar.block_size
        start, tail = first_block(request.num_prompt_tokens, B)
        settings = RequestSettings.from_params(params, self.sdar.defaults)
        rules = settings.rules
        self.open_blocks[request.request_id] = BlockState(
            block_start=start,
            tokens=[self.sdar.mask_id] * (B - tail),
            decoding=settings.block_decoding(B),
            stream_blocks=settings.options.stream_granularity == "block",
            rules=rules if rules.changes_logits or rules.min_p else None,
        )
        # Each denoising forward is reported like a speculative "verify step":
        # drafted = open slots predicted, accepted = slots unmasked.
        request.spec_decode_metrics = RequestSpecDecodeMetrics.new(B)
        super().add_request(request)

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        self.open_blocks.pop(request.request_id, None)
        return super()._free_request(request, delay_free_blocks)

    # -- scheduling ----------------------------------------------------------

    def _plan(self, request: Request, computed: int, budget: int) -> tuple[int, BlockPlan | None]:
        """How many tokens to schedule from `computed`, and the step's plan."""
        state = self.open_blocks[request.request_id]
        end = state.block_start + self.sdar.block_size
        if end - computed <= budget:
            num_new, num_logits = end - computed, len(state.tokens)
        else:
            # Not enough budget for the whole span: prefill whole blocks
            # before the open one (a chunk boundary inside a block would let
            # its queries see keys not written yet).
            B = self.sdar.block_size
            num_new = min(budget, state.block_start - computed) // B * B
            num_logits = 0
            if num_new <= 0:
                return 0, None
        grammar_mask = self.structured.first_slot_mask(request) if num_logits else None
        if grammar_mask is not None and not self.structured.can_continue(
            request, grammar_mask, self.sdar.mask_id
        ):
            return 0, None  # ended in the next update (structured.py: dead ends)
        first = max(computed, request.num_prompt_tokens)
        if num_logits:
            # all_token_ids may already hold the open block's decided prefix.
            token_ids = request.all_token_ids[first : end - len(state.tokens)] + state.tokens
        else:
            token_ids = request.all_token_ids[first : computed + num_new]
        first_output_pos = end - len(state.tokens) - request.num_prompt_tokens
        return num_new, BlockPlan(
            first_pos=first,
            token_ids=list(token_ids),
            num_logits=num_logits,
            mask_id=self.sdar.mask_id,
            block_start=state.block_start,
            step=state.step,
            decoding=state.decoding,
            first_output_pos=first_output_pos,
            context=self._rule_context(request, state, first_output_pos) if num_logits else None,
            grammar_mask=grammar_mask,
        )

    @staticmethod
    def _rule_context(
        request: Request, state: BlockState, first_output_pos: int
    ) -> RuleContext | None:
        """Only what the request's rules read travels with the plan.

        The rules read the output before the open block (as the reference
        does), not the block's own decided prefix already appended.
        """
        rules = state.rules
        if rules is None:
            return None
        need = rules.history_needed
        out = request.output_token_ids[:first_output_pos]
        generated = tuple(out if need is None else out[len(out) - need :] if need else ())
        prompt = tuple(request.prompt_token_ids or ()) if rules.repetition_penalty != 1.0 else ()
        return RuleContext(rules, generated, prompt)

    def schedule(self, throttle_prefills: bool = False) -> SdarSchedulerOutput:
        """One denoising step for every running block, then admit waiting
        requests while the token budget and KV pages last (FCFS)."""
        self.current_step += 1
        self.kv_cache_manager.new_step_starts()
        step = _Step(budget=self.max_num_scheduled_tokens, now=time.monotonic())
        self._schedule_running(step)
        # DP prefill balancing, as vLLM's schedule(): a throttled step admits
        # no new prefill while some request is decoding, unless the rank is
        # saturated (the attribute is absent before vLLM 0.33's balancing).
        defer = (
            throttle_prefills
            and not getattr(self, "prefill_capacity_bound", False)
            and any(not r.is_prefill_chunk for r in self.running)
        )
        if not step.preempted and not defer:
            self._schedule_waiting(step)
        output = self._scheduler_output(step)
        self._advance_computed(step)
        return output

    def _schedule_running(self, step: _Step) -> None:
        """The running requests in order; out of KV pages, the newest is
        preempted (recomputed later), as in vLLM's schedule()."""
        i = 0
        while i < len(self.running) and step.budget > 0:
            request = self.running[i]
            num_new, plan = self._plan(request, request.num_computed_tokens, step.budget)
            if plan is None:
                i += 1
                continue
            while (pages := self.kv_cache_manager.allocate_slots(request, num_new)) is None:
                victim = self.running.pop()
                self._preempt_request(victim, step.now)
                step.preempted.append(victim)
                if victim is request:
                    break
            if pages is None:
                break
            step.running.append(request)
            step.add(request.request_id, num_new, plan, pages)
            i += 1

    def _schedule_waiting(self, step: _Step) -> None:
        # LoRA (engine/lora.py): requests whose adapter would exceed max_loras
        # wait without blocking the queue, as in vLLM's schedule().
        skipped: list[Request] = []
        if self.lora.enabled:
            self.lora.start(self.running)
        while self.waiting and step.budget > 0 and len(self.running) < self.max_num_running_reqs:
            request = self.waiting.peek_request()
            if self.lora.enabled:
                if (why := self.lora.adapter_error(request)) is not None:
                    self.waiting.pop_request()
                    self.lora.reject(request, why)
                    self._free_request(request)
                    continue
                if not self.lora.fits(request):
                    skipped.append(self.waiting.pop_request())
                    continue
            if not grammar_ready(self, request):  # its grammar is still compiling
                skipped.append(self.waiting.pop_request())
                continue
            hit_pages, hit, _ = self.kv_cache_manager.get_computed_blocks(request)
            num_new, plan = self._plan(request, hit, step.budget)
            if plan is None:
                break
            pages = self.kv_cache_manager.allocate_slots(
                request, num_new, num_new_computed_tokens=hit, new_computed_blocks=hit_pages
            )
            if pages is None:
                break
            self.waiting.pop_request()
            self.running.append(request)
            self.lora.admit(request)
            resumed = request.status == RequestStatus.PREEMPTED
            (step.resumed if resumed else step.new).append(request)
            if self.log_stats:
                request.record_event(EngineCoreEventType.SCHEDULED, step.now)
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = hit
            step.add(
                request.request_id,
                num_new,
                plan,
                self.kv_cache_manager.get_blocks(request.request_id),
            )
        if skipped:
            self.waiting.prepend_requests(reversed(skipped))  # extendleft: keep FCFS order

    def _scheduler_output(self, step: _Step) -> SdarSchedulerOutput:
        if self.runner_v2:
            # MRV2 dropped a preempted request's worker state: it comes back as new.
            step.new += step.resumed
            step.resumed = []
        return SdarSchedulerOutput(
            scheduled_new_reqs=[
                new_request_data(r, step.pages[r.request_id].get_block_ids(), self.runner_v2)
                for r in step.new
            ],
            scheduled_cached_reqs=cached_request_data(
                self, step.running, step.resumed, step.num_scheduled, step.pages
            ),
            num_scheduled_tokens=step.num_scheduled,
            total_num_scheduled_tokens=sum(step.num_scheduled.values()),
            scheduled_spec_decode_tokens={},
            scheduled_encoder_inputs={},
            preempted_req_ids=self.reset_preempted_req_ids,
            finished_req_ids=self.finished_req_ids,
            free_encoder_mm_hashes=[],
            new_block_ids_to_zero=self._get_new_block_ids_to_zero(),
            sdar_plans=step.plans,
        )

    def _advance_computed(self, step: _Step) -> None:
        """vLLM's `_update_after_schedule`, SDAR's accounting (patches/README.md):
        after the output captured the pre-step counts, advance to where the
        final KV will end once this step has run: the open block's start
        (its KV is rewritten next step), or past a prompt chunk. vLLM's
        in-flight counters stay 0: async scheduling is refused at start-up."""
        for req_id, plan in step.plans.items():
            request = self.requests[req_id]
            if plan.num_logits:
                request.num_computed_tokens = plan.block_start
            else:
                request.num_computed_tokens += step.num_scheduled[req_id]
            request.is_prefill_chunk = plan.num_logits == 0
        if hasattr(self, "prev_step_scheduled_req_ids"):  # V1's token cache (<= 0.33)
            self.prev_step_scheduled_req_ids = set(step.num_scheduled)
        # New sets, not clear(): the output just made holds the old ones.
        self.finished_req_ids = set()
        self.reset_preempted_req_ids = set()

    # -- logprobs ------------------------------------------------------------

    def _keep_logprobs(
        self, state: BlockState, new_tokens: list[int], output: ModelRunnerOutput, start: int
    ) -> int:
        """Store the runner's rows for the slots this step unmasked; returns
        the row after them.

        The runner sends one row per slot that went from MASK to a token, in
        position order, step after step (rows cu[i]:cu[i+1] of request i),
        the same rule as here.
        """
        lists = output.logprobs
        mask = self.sdar.mask_id
        slots = [
            i for i, (old, new) in enumerate(zip(state.tokens, new_tokens)) if old == mask != new
        ]
        if lists is None or not slots:
            return start
        width = state.num_logprobs + 1 if state.num_logprobs >= 0 else None
        for r, slot in enumerate(slots, start):
            state.logprobs[slot] = (
                lists.logprob_token_ids[r, :width],
                lists.logprobs[r, :width],
                int(lists.sampled_token_ranks[r]),
            )
        return start + len(slots)

    @staticmethod
    def _slot_logprobs(state: BlockState, first: int, end: int) -> LogprobsLists | None:
        """Rows of the block's slots first..end, in vLLM's layout, for one output."""
        if state.num_logprobs is None or end <= first:
            return None
        rows = [state.logprobs[i] for i in range(first, end)]
        return LogprobsLists(
            logprob_token_ids=np.stack([r[0] for r in rows]),
            logprobs=np.stack([r[1] for r in rows]),
            sampled_token_ranks=np.array([r[2] for r in rows]),
        )

    # -- results -------------------------------------------------------------

    def _output(self, request: Request, state: BlockState, done: bool) -> EngineCoreOutput:
        """The slots appended since the last output, sent now."""
        first, state.sent = state.sent, state.appended
        prefill_stats = request.take_prefill_stats()
        if prefill_stats is not None:
            prefill_stats.finalize(self.kv_cache_manager.estimate_cached_tokens(request))
        return EngineCoreOutput(
            request_id=request.request_id,
            new_token_ids=state.tokens[first : state.sent],
            new_logprobs=self._slot_logprobs(state, first, state.sent),
            finish_reason=request.get_finished_reason() if done else None,
            stop_reason=request.stop_reason,
            events=request.take_events(),
            prefill_stats=prefill_stats,
            spec_decode_metrics=request.spec_decode_metrics if done else None,
            trace_headers=request.trace_headers,
        )

    @staticmethod
    def _mark_unconverged(request: Request, state: BlockState) -> None:
        request.status = RequestStatus.FINISHED_ERROR
        request.stop_reason = (
            f"sdar_block_not_converged: block at position {state.block_start} still had "
            f"MASK slots after {state.step} denoising steps (max_block_steps)"
        )
        logger.error("SDAR request %s: %s", request.request_id, request.stop_reason)

    def _apply_step(
        self,
        request: Request,
        state: BlockState,
        plan: BlockPlan,
        proposed: list[int],
        output: ModelRunnerOutput,
        rows: int,
        step_stats: SpecDecodingStats | None,
    ) -> tuple[bool, bool, int]:
        """One denoising step's block into the request: (done, block final,
        the next step's first logprobs row)."""
        mask = self.sdar.mask_id
        new_tokens = proposed
        if plan.grammar_mask is not None:
            # Structured: only the grammar-valid selected run from the
            # first masked slot is kept (engine/structured.py).
            new_tokens = self.structured.accept(request, state.tokens, proposed, mask)
        was_open = sum(t == mask for t in state.tokens)
        still_open = sum(t == mask for t in new_tokens)
        if state.num_logprobs is not None:
            # The runner's rows follow its own output (re-masked slots'
            # rows are replaced when those slots are decided).
            rows = self._keep_logprobs(state, proposed, output, rows)
        state.tokens, state.step = list(new_tokens), state.step + 1
        if step_stats is not None:
            step_stats.num_drafts += 1
            step_stats.num_draft_tokens += was_open
        # The decided prefix is final output: append it (vLLM's stop checks
        # run per token) and stream it unless held for the block.
        decided = decided_prefix(state.tokens, mask)
        appended, done = self._update_request_with_output(
            request, state.tokens[state.appended : decided]
        )
        state.appended += len(appended)
        # "Accepted" = tokens this forward made final output, as on /metrics:
        # summed over a request, its output length (docs/serving.md).
        request.spec_decode_metrics.observe(num_draft_tokens=was_open, num_accepted=len(appended))
        if step_stats is not None:
            step_stats.num_accepted_tokens += len(appended)
        if not done and still_open and state.step >= self.sdar.max_block_steps:
            # Safety net (MASK is never proposed, so this needs a bug or
            # non-finite logits): end the request instead of holding its KV
            # forever.
            self._mark_unconverged(request, state)
            done = True
        return done, not still_open, rows

    def update_from_output(
        self, scheduler_output: SdarSchedulerOutput, model_runner_output: ModelRunnerOutput
    ) -> dict[int, EngineCoreOutputs]:
        plans = scheduler_output.sdar_plans
        outputs: dict[int, list[EngineCoreOutput]] = defaultdict(list)
        stopped: set[Request] = set()
        mask = self.sdar.mask_id
        # Per-step SDAR counters for /metrics (see vllm_sdar.serving.metrics).
        step_stats = SpecDecodingStats.new(self.sdar.block_size) if self.log_stats else None
        rows_of = output_index(model_runner_output)
        for req_id, plan in plans.items():
            request = self.requests.get(req_id)
            if request is None or request.is_finished() or not plan.num_logits:
                continue
            state = self.open_blocks[req_id]
            index = rows_of[req_id]
            sampled = model_runner_output.sampled_token_ids[index]
            rows = (
                model_runner_output.logprobs.cu_num_generated_tokens[index]
                if model_runner_output.logprobs is not None
                else 0
            )
            # One block per denoising step the runner ran for this request
            # (several with steps_per_iteration > 1), replayed in order.
            width = len(state.tokens)
            done = block_final = False
            for first in range(0, len(sampled), width):
                done, block_final, rows = self._apply_step(
                    request,
                    state,
                    plan,
                    sampled[first : first + width],
                    model_runner_output,
                    rows,
                    step_stats,
                )
                if done or block_final:
                    break
            next_start = state.block_start + self.sdar.block_size
            if block_final and not done and next_start + self.sdar.block_size > self.max_model_len:
                request.status = RequestStatus.FINISHED_LENGTH_CAPPED
                done = True
            if done or (state.appended > state.sent and (block_final or not state.stream_blocks)):
                outputs[request.client_index].append(self._output(request, state, done))
            if done:
                self._free_request(request)
                stopped.add(request)
            elif block_final:
                state.block_start, state.step = next_start, 0
                state.tokens = [mask] * self.sdar.block_size
                state.appended = state.sent = 0
                state.logprobs = {}

        for client, out in self.lora.take_rejected():
            outputs[client].append(out)
        finish_grammar_errors(self, outputs)
        self.structured.finish_dead_ends(self, outputs)
        if stopped:
            self.running = remove_all(self.running, stopped)
        engine_outputs = {
            client: EngineCoreOutputs(outputs=outs) for client, outs in outputs.items()
        }
        if self.finished_req_ids_dict:
            for client, finished in self.finished_req_ids_dict.items():
                engine_outputs.setdefault(client, EngineCoreOutputs()).finished_requests = finished
            self.finished_req_ids_dict.clear()
        stats = self.make_stats(step_stats)
        if stats is not None:
            # As vLLM does: stats ride on one client's outputs, made if none.
            if not engine_outputs:
                engine_outputs[0] = EngineCoreOutputs()
            next(iter(engine_outputs.values())).scheduler_stats = stats
        return engine_outputs

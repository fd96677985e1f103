"""Running the real vLLM engine and the reference decoder side by side."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM, SamplingParams

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.algorithm.request_settings import RequestSettings
from vllm_sdar.tools.llm_shutdown import shutdown_llm


@contextmanager
def sdar_llm(model: Path | str, **overrides: Any) -> Iterator[LLM]:
    kwargs: dict[str, Any] = dict(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=0.5,
        max_model_len=512,
        seed=0,
    )
    kwargs.update(overrides)
    llm = LLM(**kwargs)
    check_runner(llm)
    try:
        yield llm
    finally:
        shutdown_llm(llm)


def on_model_runner_v2() -> bool:
    """This test process runs engines on Model Runner V2 (tests/mrv2.md)."""
    return os.environ.get("VLLM_SDAR_TEST_MRV2") == "1"


def check_runner(llm: LLM) -> None:
    """The engine runs the SDAR runner this pass asked for: a Model Runner V2
    pass never falls back to V1 unnoticed (in-process engines only; an
    engine in its own process logs its runner, see test_model_runner_v2)."""
    core = getattr(llm.llm_engine.engine_core, "engine_core", None)
    if core is None:
        return
    worker = getattr(core.model_executor, "driver_worker", None)
    runner = getattr(getattr(worker, "worker", None), "model_runner", None)
    if runner is None or not type(runner).__module__.startswith("vllm_sdar"):
        return  # not an SDAR model (vLLM's own runner serves it)
    want = "SdarCPUModelRunnerV2" if on_model_runner_v2() else "SdarCPUModelRunner"
    assert type(runner).__name__ == want, (type(runner).__name__, want)


@contextmanager
def tight_kv_llm(model: Path | str, **overrides: Any) -> Iterator[LLM]:
    """An engine whose KV cache (6 pages) cannot hold a batch of long
    requests, with a 64-token step budget: preemption, recompute and
    block-aligned chunked prefill all happen."""
    with sdar_llm(
        model,
        num_gpu_blocks_override=6,
        max_num_batched_tokens=64,
        max_model_len=384,
        enable_prefix_caching=False,
        **overrides,
    ) as llm:
        yield llm


def prompt_of(length: int, salt: int = 0) -> list[int]:
    """A deterministic prompt of random (non-special) token ids."""
    rng = random.Random(length * 1000 + salt)
    return [rng.randrange(100, 150000) for _ in range(length)]


def scheduler_of(llm: LLM) -> Any:
    """The engine's scheduler (in-process engine core only)."""
    return llm.llm_engine.engine_core.engine_core.scheduler


@contextmanager
def spying(
    obj: Any,
    name: str,
    before: Callable[..., None] | None = None,
    after: Callable[..., None] | None = None,
) -> Iterator[None]:
    """Watch every call of `obj.name` until the block ends, then put the
    original back: `before(*args)` just before a call, `after(result, *args)`
    just after it."""
    original = getattr(obj, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result

    setattr(obj, name, spy)
    try:
        yield
    finally:
        setattr(obj, name, original)


@contextmanager
def engine_steps(llm: LLM, record: Callable[[Any, Any], Any] | None = None) -> Iterator[list[Any]]:
    """Record every engine step that schedules work (one model forward each
    unless steps_per_iteration > 1): its num_scheduled_tokens, or what
    `record(scheduler, scheduler_output)` returns."""
    scheduler = scheduler_of(llm)
    steps: list[Any] = []

    def step(out: Any, *args: Any, **kwargs: Any) -> None:
        if out.total_num_scheduled_tokens:
            steps.append(
                dict(out.num_scheduled_tokens) if record is None else record(scheduler, out)
            )

    with spying(scheduler, "schedule", after=step):
        yield steps


@contextmanager
def record_preemptions(
    llm: LLM, which: Callable[[Any, Any], bool] = lambda scheduler, request: True
) -> Iterator[list[str]]:
    """Ids of the requests the scheduler preempts inside the block (those
    `which`(scheduler, request) accepts, asked just before the preemption)."""
    scheduler = scheduler_of(llm)
    preempted: list[str] = []

    def preempt(request: Any, *args: Any, **kwargs: Any) -> None:
        if which(scheduler, request):
            preempted.append(request.request_id)

    with spying(scheduler, "_preempt_request", before=preempt):
        yield preempted


# `vllm serve` flags of every test server on a tiny checkpoint.
TINY_SERVER_FLAGS = [
    "--dtype", "float32",
    "--max-model-len", "512",
    "--gpu-memory-utilization", "0.5",
    "--enforce-eager",
]  # fmt: skip


def served_copy(checkpoint: Path, factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh directory holding `checkpoint` as ./<name> (servers run there)."""
    import shutil

    path = factory.mktemp("serve")
    shutil.copytree(checkpoint, path / name)
    return path


# Every strategy, with options that make the tiny models' steps differ from
# the static quota: their confidences sit around 0.1-0.4 (0.25 makes some
# steps unmask several slots and others fall back to the quota) and their
# entropies around 3-4 nats (7 lets some steps take two slots).
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "low_confidence_static": {},
    "low_confidence_dynamic": {"confidence_threshold": 0.25},
    "sequential": {},
    "entropy_bounded": {"eb_threshold": 7.0},
}


def strategy_options(strategy: str) -> dict[str, Any]:
    """The SDAR options of one strategy in STRATEGY_OPTIONS."""
    return {"remasking_strategy": strategy, **STRATEGY_OPTIONS[strategy]}


def params(max_tokens: int = 10, **kwargs: Any) -> SamplingParams:
    sdar = {k: kwargs.pop(k) for k in list(kwargs) if k in SdarOptions.KEYS}
    kwargs.setdefault("temperature", 0.0)
    return SamplingParams(max_tokens=max_tokens, extra_args=sdar or None, **kwargs)


def assert_logprobs_match(got: Any, want: list[tuple[list[int], list[float], int]]) -> None:
    """vLLM's per-token {id: Logprob} against the reference's rows."""
    assert got is not None and len(got) == len(want)
    for position, (ids, values, rank) in zip(got, want, strict=True):
        assert set(position) == set(ids), (sorted(position), ids)
        for tok, val in zip(ids, values, strict=True):
            assert position[tok].logprob == pytest.approx(val, rel=1e-4, abs=1e-4)
        # The engine's and the reference's logits differ by float rounding, so a
        # sampled token's rank among ~152k near-equal logits may move a little.
        assert abs(position[ids[0]].rank - rank) <= max(2, rank // 100)


def generate_ids(
    llm: LLM, prompts: Sequence[Sequence[int]], ps: SamplingParams | Sequence[SamplingParams]
) -> list[Any]:
    outs = llm.generate([{"prompt_token_ids": list(p)} for p in prompts], ps, use_tqdm=False)
    return [o.outputs[0] for o in outs]


def denoise_forwards(completion: Any) -> int:
    """Denoising forwards a request ran (see README: per-request metrics)."""
    return sum(completion.spec_decode_metrics.histogram)


def assert_matches_reference(
    llm: LLM,
    ref: ReferenceDecoder,
    prompts: Sequence[Sequence[int]],
    ps: SamplingParams | Sequence[SamplingParams],
    got: Sequence[Any] | None = None,
) -> list[Any]:
    """got: the engine's outputs when the caller already generated them."""
    ps_list = list(ps) if not isinstance(ps, SamplingParams) else [ps] * len(prompts)
    if got is None:
        got = generate_ids(llm, prompts, ps_list)
    for prompt, p, out in zip(prompts, ps_list, got, strict=True):
        want = ref.generate_one(prompt, RequestSettings.from_params(p))
        context = f"prompt len {len(prompt)}, params {p.extra_args}, seed {p.seed}"
        assert list(out.token_ids) == want.token_ids, context
        assert out.finish_reason == want.finish_reason, context
        assert denoise_forwards(out) == want.num_denoise_forwards, context
        # histogram[k] = forwards that made k tokens final: they add up to the output.
        histogram = out.spec_decode_metrics.histogram
        assert sum(k * n for k, n in enumerate(histogram)) == len(out.token_ids), context
        if p.logprobs is not None:
            assert_logprobs_match(out.logprobs, want.logprobs)
    return list(got)

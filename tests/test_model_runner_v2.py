"""What only Model Runner V2 has: its own request state and its refusals. Runs
in scripts/test.sh's MRV2 pass (tests/mrv2.md); the engine tests marked
`mrv2` run there too (among them an engine in its own process,
test_engine_dense.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM
from vllm.engine.arg_utils import EngineArgs

from vllm_sdar.algorithm.reference import ReferenceDecoder

from .engine_helpers import (
    assert_matches_reference,
    params,
    prompt_of,
    scheduler_of,
    sdar_llm,
    spying,
)

pytestmark = [pytest.mark.engine, pytest.mark.mrv2_only]


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Iterator[LLM]:
    with sdar_llm(tiny_dense) as engine:
        yield engine


def _runner(llm: LLM) -> Any:
    return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner


def test_worker_state_follows_the_scheduler_every_step(llm: LLM, tiny_dense: Path) -> None:
    """The division of state (docs/internals.md): after every step, MRV2's
    own num_computed_tokens equals the scheduler's for every running request
    (the open block's start: its KV is rewritten next step), and MRV2's token
    rows hold only the prompt (no SDAR token is appended there)."""
    scheduler, runner = scheduler_of(llm), _runner(llm)
    checked: list[tuple[int, int]] = []

    def check(out: Any, scheduler_output: Any, model_runner_output: Any) -> None:
        states = runner.req_states
        for request in scheduler.running:
            idx = states.req_id_to_index.get(request.request_id)
            if idx is None or request.request_id not in scheduler_output.num_scheduled_tokens:
                continue
            worker = int(states.num_computed_tokens.gpu[idx])
            checked.append((worker, request.num_computed_tokens))
            assert int(states.total_len.gpu[idx]) == int(states.prefill_len.np[idx])

    with spying(scheduler, "update_from_output", after=check):
        prompts = [prompt_of(n, salt=4) for n in (1, 5, 11, 30)]
        assert_matches_reference(
            llm, ReferenceDecoder(tiny_dense), prompts, params(max_tokens=14, ignore_eos=True)
        )
    assert checked and all(w == s for w, s in checked), checked


def _refusal(model: Path, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as err:
        EngineArgs(
            model=str(model), dtype="float32", max_model_len=512, **kwargs
        ).create_engine_config()
    lines = [line for line in str(err.value).splitlines() if "vllm-sdar:" in line]
    assert len(lines) == 1, str(err.value)
    return lines[0]


def test_what_model_runner_v2_refuses(tiny_dense: Path) -> None:
    line = _refusal(tiny_dense, hf_overrides={"steps_per_iteration": 2})
    assert "steps_per_iteration > 1 on Model Runner V2" in line
    # vLLM 0.32 / 0.33's MRV2 maps lm_head rows to adapters per request.
    line = _refusal(tiny_dense, enable_lora=True, max_lora_rank=8)
    assert "--enable-lora on Model Runner V2" in line and "VLLM_USE_V2_MODEL_RUNNER=0" in line

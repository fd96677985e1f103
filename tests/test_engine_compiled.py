"""The plugin under torch.compile (vLLM's CPU default; issue 21).

Every other engine test runs eager (`enforce_eager=True`) to start fast.
vLLM compiles the model by default (on CPU: one Dynamo trace compiled by
Inductor, `DYNAMO_TRACE_ONCE`; on GPUs: piecewise graphs split at the
attention ops), so the SDAR forward (block-causal virtual requests, several
logits rows per request) must give the reference decoder's tokens with
compilation on too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm.config import CompilationMode

from vllm_sdar.algorithm.reference import ReferenceDecoder

from .engine_helpers import assert_matches_reference, sdar_llm
from .test_engine_variants import mixed_workload

pytestmark = pytest.mark.engine


def test_compiled_engine_equals_reference(tiny_dense: Path) -> None:
    prompts, ps = mixed_workload(4, n=8)
    with sdar_llm(tiny_dense, enforce_eager=False) as llm:
        mode = llm.llm_engine.vllm_config.compilation_config.mode
        assert mode == CompilationMode.DYNAMO_TRACE_ONCE  # the CPU platform's choice
        assert_matches_reference(llm, ReferenceDecoder(tiny_dense), prompts, ps)

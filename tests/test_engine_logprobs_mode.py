"""--logprobs-mode processed_logprobs on the engine equals the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_sdar.algorithm.reference import ReferenceDecoder

from .engine_helpers import assert_matches_reference, params, sdar_llm
from .test_engine_sampling import PROMPTS, SEEDED


@pytest.mark.engine
@pytest.mark.mrv2
def test_processed_logprobs_mode(tiny_dense: Path) -> None:
    """--logprobs-mode processed_logprobs: the distribution the token came from."""
    ref = ReferenceDecoder(tiny_dense, logprobs_mode="processed_logprobs")
    rules = {"repetition_penalty": 1.5, "logit_bias": {5: 3.0}, "min_p": 0.2, "top_k": 20}
    ps = [
        params(max_tokens=9, logprobs=4, ignore_eos=True, **rules),
        params(max_tokens=9, logprobs=4, ignore_eos=True, **SEEDED, **rules),
        params(max_tokens=9, ignore_eos=True),
    ]
    with sdar_llm(tiny_dense, logprobs_mode="processed_logprobs") as engine:
        outs = assert_matches_reference(engine, ref, [*PROMPTS, PROMPTS[0]], ps)
    assert outs[0].logprobs is not None and outs[2].logprobs is None

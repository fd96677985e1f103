"""Ray Data LLM batch (examples/ray_batch.py) equals `LLM(...)` for the same rows."""

from __future__ import annotations

import json
import runpy

import pytest

from vllm_sdar.serving.names import PACKAGED

from .conftest import REPO
from .engine_helpers import params, sdar_llm
from .ray_helpers import local_ray

pytestmark = pytest.mark.engine

EXAMPLE = runpy.run_path(str(REPO / "examples" / "ray_batch.py"))


def test_ray_data_batch_equals_llm() -> None:
    model = PACKAGED["sdar-addition"]
    rows = EXAMPLE["rows"]()
    assert len({r["sdar"] for r in rows}) > 1  # per-row options differ
    with sdar_llm(model, **EXAMPLE["ENGINE_KWARGS"]) as llm:
        outs = llm.generate(
            [r["prompt"] for r in rows],
            [params(max_tokens=16, **json.loads(r["sdar"])) for r in rows],
            use_tqdm=False,
        )
    want = {
        r["prompt"]: (list(o.outputs[0].token_ids), o.outputs[0].text) for r, o in zip(rows, outs)
    }
    with local_ray():
        got = EXAMPLE["run"](model, rows)
    assert {g["prompt"]: (list(g["token_ids"]), g["text"]) for g in got} == want

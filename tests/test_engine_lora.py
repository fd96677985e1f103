"""LoRA adapters through the plugin (issue 24), offline, on the tiny dense checkpoint.

One engine with `enable_lora`, max_loras 2, and three random PEFT adapters
(lora_B drawn, not zero, so each changes the output): all linear layers +
lm_head, attention only, MLP only. The reference decoder runs the base
weights with the adapter merged in (`convert.lora.merge_adapter`). Random
weights and prompts over the 151k-token vocabulary give multi-block answers
where every lm_head row matters (the row -> adapter mapping of engine/lora.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vllm import LLM
from vllm.lora.request import LoRARequest

from vllm_sdar.algorithm.reference import ReferenceDecoder
from vllm_sdar.convert.lora import DEFAULT_TARGETS, merge_adapter, random_adapter

from .engine_helpers import assert_matches_reference, engine_steps, params, prompt_of, sdar_llm

pytestmark = pytest.mark.engine

B = 4
MAX_LORAS = 2
RANK = 8
ADAPTERS = {  # name: (lora id, target modules, seed)
    "full": (1, (*DEFAULT_TARGETS, "lm_head"), 1),
    "attn": (2, ("q_proj", "k_proj", "v_proj", "o_proj"), 2),
    "mlp": (3, ("gate_proj", "up_proj", "down_proj"), 3),
}
LENGTHS = [1, B - 1, B, B + 1, 3 * B + 2]


@pytest.fixture(scope="module")
def adapter_dirs(tiny_dense: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        name: random_adapter(tiny_dense, root / name, targets=targets, rank=RANK, seed=seed)
        for name, (_, targets, seed) in ADAPTERS.items()
    }


@pytest.fixture(scope="module")
def loras(adapter_dirs: dict[str, Path]) -> dict[str, LoRARequest]:
    return {
        name: LoRARequest(name, ADAPTERS[name][0], str(path)) for name, path in adapter_dirs.items()
    }


@pytest.fixture(scope="module")
def llm(tiny_dense: Path) -> Iterator[LLM]:
    with sdar_llm(
        tiny_dense, enable_lora=True, max_lora_rank=RANK, max_loras=MAX_LORAS, max_cpu_loras=3
    ) as engine:
        yield engine


def run(llm: LLM, prompts: list[list[int]], ps: Any, lora: Any = None) -> list[Any]:
    outs = llm.generate(
        [{"prompt_token_ids": p} for p in prompts], ps, lora_request=lora, use_tqdm=False
    )
    return [o.outputs[0] for o in outs]


def scheduled_adapters(scheduler: Any, out: Any) -> set[int]:
    """The adapter ids of one step's scheduled requests (0: base model)."""
    ids = set()
    for req_id in out.num_scheduled_tokens:
        lora = scheduler.requests[req_id].lora_request
        ids.add(lora.lora_int_id if lora is not None else 0)
    return ids


@pytest.mark.parametrize("name", ["full", "attn"])
def test_adapter_equals_reference_on_merged_weights(
    llm: LLM,
    tiny_dense: Path,
    adapter_dirs: dict[str, Path],
    loras: dict[str, LoRARequest],
    tmp_path: Path,
    name: str,
) -> None:
    ref = ReferenceDecoder(merge_adapter(tiny_dense, adapter_dirs[name], tmp_path / "merged"))
    prompts, ps = [], []
    for strategy, extra in (
        ("low_confidence_static", {}),
        ("low_confidence_dynamic", {"confidence_threshold": 0.25}),
    ):
        for length in LENGTHS:
            prompts.append(prompt_of(length, salt=7))
            ps.append(params(max_tokens=11, remasking_strategy=strategy, **extra))
    got = run(llm, prompts, ps, loras[name])
    assert_matches_reference(llm, ref, prompts, ps, got=got)
    # Not vacuous: the adapter changes what the base model says.
    base = run(llm, prompts, ps)
    assert [o.token_ids for o in base] != [o.token_ids for o in got]


def test_mixed_batch_gives_each_request_its_solo_output(
    llm: LLM, loras: dict[str, LoRARequest]
) -> None:
    # Base requests and three adapters with max_loras 2: the scheduler must
    # hold one adapter's requests back until a slot frees (vLLM's worker
    # raises when a step asks for more adapters than slots).
    plan = [None, "full", "attn", "mlp", None, "mlp", "full", "attn", None, "attn"]
    prompts = [prompt_of(3 + 2 * i, salt=11) for i in range(len(plan))]
    ps = params(max_tokens=9, confidence_threshold=0.25)
    lora_of = [None if name is None else loras[name] for name in plan]
    solo = [run(llm, [p], ps, lora)[0].token_ids for p, lora in zip(prompts, lora_of)]
    with engine_steps(llm, scheduled_adapters) as steps:
        together = run(llm, prompts, ps, lora_of)
    assert [o.token_ids for o in together] == solo
    assert max(len(ids - {0}) for ids in steps) == MAX_LORAS
    assert set().union(*steps) == {0, 1, 2, 3}
    # The batch really mixed base and adapter requests in single steps.
    assert any(0 in ids and len(ids) > 1 for ids in steps)


def test_bad_adapter_ends_its_request_and_engine_keeps_serving(
    llm: LLM, loras: dict[str, LoRARequest], tiny_dense: Path, tmp_path: Path
) -> None:
    too_wide = random_adapter(tiny_dense, tmp_path / "rank16", targets=("q_proj",), rank=16)
    bad = [
        LoRARequest("missing", 7, str(tmp_path / "no-such-adapter")),
        LoRARequest("not-an-adapter", 8, str(tiny_dense)),  # a model, no adapter_config.json
        LoRARequest("too-wide", 9, str(too_wide)),
    ]
    prompts = [prompt_of(5, salt=i) for i in range(5)]
    ps = params(max_tokens=6)
    solo_base = run(llm, [prompts[3]], ps)[0].token_ids
    solo_full = run(llm, [prompts[4]], ps, loras["full"])[0].token_ids
    outs = run(llm, prompts, ps, [*bad, None, loras["full"]])
    for out, lora in zip(outs[:3], bad):
        assert out.finish_reason == "error" and not out.token_ids
        assert str(out.stop_reason).startswith("sdar_lora_adapter_error")
        assert lora.lora_path in str(out.stop_reason)
    assert "max_lora_rank" in str(outs[2].stop_reason)
    assert outs[3].token_ids == solo_base
    assert outs[4].token_ids == solo_full
    # vLLM's own loading call fails clearly too, and the engine still serves.
    with pytest.raises(Exception, match="no-such-adapter"):
        llm.llm_engine.add_lora(bad[0])
    assert run(llm, [prompts[4]], ps, loras["full"])[0].token_ids == solo_full


def test_dynamic_loading(llm: LLM, loras: dict[str, LoRARequest]) -> None:
    prompt, ps = [prompt_of(6, salt=3)], params(max_tokens=8)
    want = run(llm, prompt, ps, loras["mlp"])[0].token_ids
    engine = llm.llm_engine
    engine.remove_lora(loras["mlp"].lora_int_id)
    assert loras["mlp"].lora_int_id not in engine.list_loras()
    assert engine.add_lora(loras["mlp"])
    assert loras["mlp"].lora_int_id in engine.list_loras()
    assert run(llm, prompt, ps, loras["mlp"])[0].token_ids == want


def test_prefix_cache_is_per_adapter(
    llm: LLM,
    tiny_dense: Path,
    adapter_dirs: dict[str, Path],
    loras: dict[str, LoRARequest],
    tmp_path: Path,
) -> None:
    # A prompt of several KV pages: cached by the base request, it must not
    # be reused by the adapter request (vLLM keys cached blocks by adapter).
    prompt, ps = [prompt_of(50, salt=5)], params(max_tokens=7, confidence_threshold=0.25)
    base_first = run(llm, prompt, ps)[0].token_ids
    ref = ReferenceDecoder(merge_adapter(tiny_dense, adapter_dirs["attn"], tmp_path / "merged"))
    assert_matches_reference(llm, ref, prompt, ps, got=run(llm, prompt, ps, loras["attn"]))
    assert run(llm, prompt, ps)[0].token_ids == base_first

"""What SDAR does not support stops vLLM at start-up, in one line naming it.

Each case builds the real engine config (`EngineArgs.create_engine_config`,
which runs the plugin's config hook) for the tiny SDAR checkpoint; nothing
is allocated, so no `engine` marker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import vllm
from vllm.engine.arg_utils import EngineArgs
from vllm.triton_utils import HAS_TRITON

from vllm_sdar.engine.support import check_attention_backend, check_vllm_version


def _config(model: Path, **kwargs: Any) -> Any:
    return EngineArgs(
        model=str(model), dtype="float32", max_model_len=512, **kwargs
    ).create_engine_config()


def _refusal(model: Path, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as err:  # pydantic's ValidationError is a ValueError
        _config(model, **kwargs)
    lines = [line for line in str(err.value).splitlines() if "vllm-sdar:" in line]
    assert len(lines) == 1, str(err.value)
    return lines[0]


@pytest.mark.parametrize(
    "kwargs,option",
    [
        ({"pipeline_parallel_size": 2}, "--pipeline-parallel-size"),
        (
            {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2,
                                    "prompt_lookup_max": 3}},
            "--speculative-config",
        ),
        ({"enable_prompt_embeds": True}, "--enable-prompt-embeds"),
        (
            {"kv_transfer_config": {"kv_connector": "ExampleConnector", "kv_role": "kv_both"}},
            "--kv-transfer-config",
        ),
        (
            {"decode_context_parallel_size": 2, "tensor_parallel_size": 2},
            "--decode-context-parallel-size",
        ),
        ({"attention_backend": "FLASHINFER"}, "--attention-backend FLASHINFER"),
        ({"block_size": 6}, "--block-size 6"),
        ({"scheduling_policy": "priority"}, "--scheduling-policy priority"),
        ({"max_num_batched_tokens": 7}, "--max-num-batched-tokens 7"),
    ],
)  # fmt: skip
def test_unsupported_option_refused(tiny_dense: Path, kwargs: dict, option: str) -> None:
    line = _refusal(tiny_dense, **kwargs)
    assert option in line and "not supported with SDAR" in line


def test_lora_refused_for_moe_on_cpu_only(tiny_dense: Path, tiny_moe: Path) -> None:
    # vLLM 0.32 has no CPU kernel for MoE layers once LoRA is on (support.py).
    line = _refusal(tiny_moe, enable_lora=True, max_lora_rank=8)
    assert "--enable-lora with an MoE model on CPU" in line and "triton_moe.py" in line
    config = _config(tiny_dense, enable_lora=True, max_lora_rank=8, max_loras=2)
    assert config.lora_config.max_loras == 2


@pytest.mark.skipif(
    HAS_TRITON, reason="needs a vLLM without Triton; MRV2's own refusals: test_model_runner_v2.py"
)
def test_forced_v2_model_runner_without_triton_refused(
    tiny_dense: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    line = _refusal(tiny_dense)
    assert "Model Runner V2 (VLLM_USE_V2_MODEL_RUNNER=1) without Triton" in line


def test_vllm_versions_outside_0_32_to_0_34_refused(
    tiny_dense: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for other in ("0.35.0", "0.31.2"):
        monkeypatch.setattr(vllm, "__version__", other)
        assert f"vLLM {other}" in _refusal(tiny_dense)
    for accepted in ("0.32.7", "0.33.0", "0.34.1"):  # every patch release of 0.32-0.34
        check_vllm_version(accepted)


def test_attention_backend_must_take_non_causal_requests() -> None:
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    check_attention_backend("CPU_ATTN", CPUAttentionBackend)  # the one run here

    class CausalOnly(CPUAttentionBackend):
        @classmethod
        def supports_non_causal(cls) -> bool:
            return False

    with pytest.raises(ValueError, match="supports_non_causal"):
        check_attention_backend("CAUSAL_ONLY", CausalOnly)
    # FlashInfer says it is non-causal-capable in some builds, but its
    # persistent buffers are sized by max_num_seqs: refused by name.
    with pytest.raises(ValueError, match="FLASHINFER"):
        check_attention_backend("FLASHINFER", CPUAttentionBackend)


def test_defaults_and_supported_options_accepted(tiny_dense: Path) -> None:
    config = _config(tiny_dense, block_size=8, scheduling_policy="fcfs")
    assert config.cache_config.block_size == 8
    assert config.scheduler_config.scheduler_cls.endswith("SdarScheduler")

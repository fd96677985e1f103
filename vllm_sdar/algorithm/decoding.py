"""The algorithm's public API: the SDAR decoding rules as pure tensor functions.

A facade over the modules that hold the code, one job each: `denoising`
(strategies, quota schedule, a request's block constants, block layout),
`filtering` (top-k/top-p), `noise` (seeded draws), `output_rules` (what a
slot may never be, the decided prefix, stop trimming), `logit_rules`
(vLLM's logits transforms and their context), `packing` (a batched step's
inputs), `proposals`
(x0, confidence, entropy), `selection` (which slots unmask), `logprobs`
and `step` (the batched step and its single-block forms). Together they
are the only code that decides which tokens of a block get unmasked. One
engine step unmasks the blocks of every scheduled request at once:
`pack_step` turns the requests' parameters into a few tensors (host side)
and `denoise_batch` runs the step on the concatenated logits of all masked
slots, with a number of tensor ops that does not grow with the batch and a
single device->host transfer. The vLLM model runner
(`vllm_sdar.engine.runner`) calls `denoise_batch`; the reference decoder
(`vllm_sdar.algorithm.reference`) calls `denoise_step_full`, a batch of one
over the same code, so the two paths agree by construction on everything
except the network's logits.

No vLLM and no transformers imports here: the modules are testable on
handcrafted logits. Semantics follow `shared/spec/sdar-decoding.md`.
"""

from vllm_sdar.algorithm.denoising import (
    STRATEGIES,
    BlockDecoding,
    Denoising,
    Sampling,
    block_causal_mask,
    first_block,
    quota_schedule,
)
from vllm_sdar.algorithm.filtering import NUCLEUS_FIRST_K, filter_top_k_top_p
from vllm_sdar.algorithm.logit_rules import RuleContext
from vllm_sdar.algorithm.logprobs import SlotLogprobs
from vllm_sdar.algorithm.noise import hash_uniform, step_noise
from vllm_sdar.algorithm.output_rules import OutputRules, decided_prefix, truncate_at_stop
from vllm_sdar.algorithm.packing import BlockStep, pack_step
from vllm_sdar.algorithm.proposals import propose
from vllm_sdar.algorithm.selection import select_slots
from vllm_sdar.algorithm.step import (
    denoise_batch,
    denoise_block,
    denoise_step,
    denoise_step_full,
)

__all__ = [
    "NUCLEUS_FIRST_K",
    "STRATEGIES",
    "BlockDecoding",
    "BlockStep",
    "Denoising",
    "OutputRules",
    "RuleContext",
    "Sampling",
    "SlotLogprobs",
    "block_causal_mask",
    "decided_prefix",
    "denoise_batch",
    "denoise_block",
    "denoise_step",
    "denoise_step_full",
    "filter_top_k_top_p",
    "first_block",
    "hash_uniform",
    "pack_step",
    "propose",
    "quota_schedule",
    "select_slots",
    "step_noise",
    "truncate_at_stop",
]

"""The seeded noise of sampled draws: a hash of the slot's position.

Owns the counter-based noise that makes a seed mean the same tokens whatever
else is batched: the per-slot row key (`StepNoise`, `step_noise`, splitmix64
on the host), the per-(row, vocabulary id) uniform hash on the device
(`hash_uniform`), and the log Exp(1) noise of the Gumbel-max draw, hashed
for seeded rows and drawn from a torch generator for the others
(`_log_exponential_noise`). Pure torch, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# A seeded draw uses noise that is a pure function of (seed, block start,
# step, slot, vocabulary id): the slot is the offset of the masked slot among
# its block's open slots (the `tokens` of `denoise_step`). It depends on
# nothing else, so seeded output is independent of batch composition,
# preemption and recompute, tensor-parallel rank and device; it is computed
# on the logits' device with integer ops that every backend does exactly.
#
# (seed, block start, step, slot) -> a 32-bit row key on the host (splitmix64
# finalizers); (row key, vocabulary id) -> 32 bits on the device (the
# vocabulary id spread by a golden-ratio multiply, xored with the key, then
# two multiply-xorshift rounds: "lowbias32" by C. Wellons, whose multipliers
# are below 2^31 so a product of a 32-bit value stays below 2^63 in int64);
# the top 23 bits -> a uniform in (0, 1) that is never 0 or 1 (so the
# exponential noise is never 0 or infinite).

_MASK32 = (1 << 32) - 1
_MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15
_VOCAB_SPREAD = 0x9E3779B1  # odd: a bijection of the vocabulary ids mod 2^32
_ROUNDS = ((16, 0x21F0AAAD), (15, 0x735A2D97))
_FINAL_SHIFT = 15
_UNIFORM_BITS = 23


def _mix64(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class StepNoise:
    """What a seeded step's noise is a function of, besides slot and token."""

    seed: int
    block_start: int
    step: int

    def slot_key(self, slot: int) -> int:
        """The 32-bit key of one slot's noise row."""
        key = _mix64((int(self.seed) + _GOLDEN64) & _MASK64)
        for part in (self.block_start, self.step, slot):
            key = _mix64(((key ^ int(part)) + _GOLDEN64) & _MASK64)
        return key >> 32


def step_noise(seed: int, block_start: int, step: int) -> StepNoise:
    """The seeded noise of one denoising step of one block.

    Derived from the position instead of carried generator state, so a seed
    means the same tokens whatever else is batched, after preemption, on
    every rank and device.
    """
    return StepNoise(int(seed), int(block_start), int(step))


def hash_uniform(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Uniform (0, 1) float32 [n, vocab]: a pure function of (key, vocabulary id).

    keys: [n] int64 row keys in [0, 2^32). A constant number of int64 ops
    whatever n; in-place where possible (the arrays are vocabulary-wide).
    """
    ids = torch.arange(vocab, dtype=torch.int64, device=keys.device)
    spread = (ids * _VOCAB_SPREAD).bitwise_and_(_MASK32)
    h = spread[None, :] ^ keys[:, None]
    shifted = torch.empty_like(h)
    for shift, multiplier in _ROUNDS:
        torch.bitwise_right_shift(h, shift, out=shifted)
        h.bitwise_xor_(shifted).mul_(multiplier).bitwise_and_(_MASK32)
    torch.bitwise_right_shift(h, _FINAL_SHIFT, out=shifted)
    h.bitwise_xor_(shifted)
    torch.bitwise_right_shift(h, 32 - _UNIFORM_BITS, out=shifted)
    del h
    return shifted.float().add_(0.5).mul_(2.0**-_UNIFORM_BITS)


def _log_exponential_noise(
    keys: torch.Tensor | None,
    seeded: torch.Tensor | None,
    generator: torch.Generator | None,
    shape: tuple[int, int],
    device: torch.device,
) -> torch.Tensor:
    """log(q) with q ~ Exp(1) per [row, token]: hashed rows where `seeded`
    (None: every row), the others drawn from `generator` (None: default)."""
    log_q = None
    if keys is not None:
        # log(-log u): the log of Exp(1) noise, in place.
        log_q = hash_uniform(keys, shape[1]).log_().neg_().log_()
    if keys is None or seeded is not None:
        gen_device = generator.device if generator is not None else device
        drawn = torch.empty(shape, dtype=torch.float32, device=gen_device)
        drawn = drawn.exponential_(generator=generator).to(device).log_()
        log_q = drawn if log_q is None else torch.where(seeded[:, None], log_q, drawn)
    return log_q

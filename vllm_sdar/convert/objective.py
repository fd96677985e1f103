"""The SDAR (block-diffusion) training objective.

One training sequence x of length L is cut into blocks of B tokens aligned to
position 0 (the same alignment the decoder uses). For each block a noise
level t ~ U(eps, 1) is drawn and each trainable token of the block is
replaced by MASK independently with probability t. The noisy copy and the
clean sequence run through the network together, as one sequence of 2L
tokens, with the block-diffusion attention mask (BD3-LM / SDAR):

- noisy block j attends to itself, in both directions, and to clean blocks < j:
  exactly what the decoder shows it (a half-masked block over the KV of the
  finished blocks before it);
- clean block j attends to clean blocks <= j: the block-causal prefill that
  produced that KV at inference. It never sees the noisy stream.

Both streams use position ids 0..L-1. The loss is cross-entropy of the noisy
stream's logits at each masked position against the clean token AT THAT
position: SDAR logits are not shifted.

Weighting (default "uniform"): the loss is the mean cross-entropy over all
masked tokens of the batch, and a block with trainable tokens but no draw
under t gets one token masked anyway, so every block carries signal. Why
not the 1/t ELBO weighting of MDLM / BD3-LM / SDAR's paper:
- variance: with B = 4 a block holds at most 4 masked tokens, and 1/t
  weights up to 1/eps make single blocks dominate a batch (gradient
  clipping then shrinks every other block's update); on the toy task the
  uniform loss converged in a fraction of the steps;
- what decoding needs: the ELBO divides out the mask rate, so lightly
  masked blocks (late denoising steps, the easy ones) count as much as
  heavily masked ones. Uniform weighting gives a block weight in proportion
  to its masked tokens, i.e. most weight to heavily masked blocks: the first
  denoising step, whose confidence decides how many tokens
  low_confidence_dynamic commits per forward.
The price is that the loss is not a likelihood bound. `weighting="elbo"`
gives the paper's objective: sum over masked tokens of CE / t, divided by
the number of trainable tokens (an unbiased estimate of the per-token NLL
bound, comparable to the AR loss). Blocks with nothing masked then add
nothing; forcing a mask there would give it weight 1/t (up to 1/eps) where
its expected weight is about its token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vllm_sdar.algorithm.hf_model import SDARForCausalLM
from vllm_sdar.convert.data import Batch

WEIGHTINGS = ("elbo", "uniform")


def two_stream_mask(
    length: int, block_size: int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool attention mask over [noisy x_t (L) ; clean x_0 (L)]: True = may attend.

    Returns [2L, 2L], or [b, 2L, 2L] when `valid` ([b, L], False on padding)
    is given; padded keys are hidden from everyone, and a padded query sees
    only itself (a row with no key would give NaN in softmax).
    """
    blk = torch.arange(length) // block_size
    q, k = blk[:, None], blk[None, :]
    noisy_noisy = q == k
    noisy_clean = k < q
    clean_clean = k <= q
    clean_noisy = torch.zeros(length, length, dtype=torch.bool)
    mask = torch.cat(
        [torch.cat([noisy_noisy, noisy_clean], 1), torch.cat([clean_noisy, clean_clean], 1)], 0
    )
    if valid is None:
        return mask
    real = torch.cat([valid, valid], 1)  # [b, 2L]
    mask = mask[None] & real[:, None, :] & real[:, :, None]
    eye = torch.eye(2 * length, dtype=torch.bool)
    return mask | (eye[None] & ~real[:, :, None])


def hidden_states(
    model: SDARForCausalLM, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The final-norm hidden states under an arbitrary mask and position ids.

    SdarModel.forward only builds block-causal masks over contiguous
    positions; the two-stream objective needs its own mask and repeats
    positions, so this calls the same layers the same way with those.
    """
    body = model.model
    hidden = body.embed_tokens(input_ids)
    rope = body.rotary_emb(hidden, positions)
    attn_mask = mask[:, None] if mask.dim() == 3 else mask[None, None]
    for layer in body.layers:
        hidden = layer(
            hidden,
            attention_mask=attn_mask,
            position_ids=positions,
            past_key_values=None,
            use_cache=False,
            position_embeddings=rope,
        )
    return body.norm(hidden)


@dataclass(frozen=True)
class Noised:
    noisy: torch.Tensor  # [b, L] clean ids with MASK at masked positions
    masked: torch.Tensor  # [b, L] bool
    t: torch.Tensor  # [b, L] float: the noise level of each token's block


def add_noise(
    batch: Batch,
    block_size: int,
    mask_id: int,
    eps: float,
    generator: torch.Generator,
    ensure_one: bool = True,
) -> Noised:
    """Mask each trainable token with its block's t ~ U(eps, 1).

    ensure_one: a block with trainable tokens but no draw under t gets its
    trainable token with the largest draw masked anyway.
    """
    ids, trainable = batch.input_ids, batch.trainable
    b, length = ids.shape
    if length % block_size:
        raise ValueError(f"sequence length {length} is not a multiple of block {block_size}")
    nblk = length // block_size
    t_blk = eps + (1.0 - eps) * torch.rand(b, nblk, generator=generator)
    t = t_blk.repeat_interleave(block_size, dim=1)
    draw = torch.rand(b, length, generator=generator)
    masked = (draw < t) & trainable
    # Blocks with trainable tokens but nothing masked: mask the trainable
    # token with the largest draw (a random one, from the same stream).
    per_blk = masked.view(b, nblk, block_size).any(-1)
    has_train = trainable.view(b, nblk, block_size).any(-1)
    needs = (has_train & ~per_blk).repeat_interleave(block_size, dim=1)
    score = torch.where(trainable, draw, torch.full_like(draw, -1.0)).view(b, nblk, block_size)
    pick = F.one_hot(score.argmax(-1), block_size).bool().view(b, length)
    if ensure_one:
        masked = masked | (needs & pick)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    return Noised(noisy, masked, t)


def sdar_loss(
    model: SDARForCausalLM,
    batch: Batch,
    block_size: int,
    mask_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    weighting: str = "elbo",
) -> torch.Tensor:
    """The scalar training loss of one batch (see the module docstring)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    # ELBO: a block with nothing masked must add nothing (module docstring).
    noised = add_noise(
        batch, block_size, mask_id, eps, generator, ensure_one=weighting == "uniform"
    )
    length = batch.input_ids.shape[1]
    ids = torch.cat([noised.noisy, batch.input_ids], dim=1)
    positions = torch.arange(length).repeat(2)[None]
    mask = two_stream_mask(length, block_size, batch.valid)
    device = next(model.parameters()).device
    hidden = hidden_states(model, ids.to(device), positions.to(device), mask.to(device))
    # lm_head only where there is a loss: with a 150k vocabulary, logits for
    # all 2L positions would dominate memory.
    masked = noised.masked.to(device)
    logits = model.lm_head(hidden[:, :length][masked]).float()
    targets = batch.input_ids.to(device)[masked]
    ce = F.cross_entropy(logits, targets, reduction="none")
    if weighting == "elbo":
        return (ce / noised.t.to(device)[masked]).sum() / max(batch.num_trainable, 1)
    return ce.mean() if ce.numel() else ce.sum()

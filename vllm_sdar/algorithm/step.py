"""One denoising step: the batched step and its single-block forms.

Owns the device-side half of a batched unmasking step: `denoise_batch`
runs forbidding, the logits transforms, proposals, slot selection and
logprobs on the concatenated logits of every packed block with a number of
tensor ops that does not grow with the batch and a single device->host
transfer (`_to_host`), and returns a `StepResult` split per block on
demand. `denoise_step_full` / `denoise_step` are a batch of one over the
same code (the reference decoder's path), so the two paths agree by
construction on everything except the network's logits. Pure torch and
numpy, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vllm_sdar.algorithm.denoising import ENTROPY, Denoising, Sampling
from vllm_sdar.algorithm.grammar_rule import force_rows, mask_rows
from vllm_sdar.algorithm.logit_rules import RuleContext, apply_logit_rules
from vllm_sdar.algorithm.logprobs import SlotLogprobs, gather_logprobs
from vllm_sdar.algorithm.noise import StepNoise
from vllm_sdar.algorithm.output_rules import OutputRules
from vllm_sdar.algorithm.packing import BlockStep, StepPack, pack_step
from vllm_sdar.algorithm.proposals import (
    ProposalRows,
    concat_proposals,
    cpu_row_chunk,
    propose_rows,
)
from vllm_sdar.algorithm.selection import select_rows


@dataclass(frozen=True)
class StepResult:
    """A batched step's outcome on the host (numpy), split per block on demand.

    x0 / chosen: [M] per row; the logprob arrays hold one row per row of the
    blocks that asked (`StepPack.logprob_rows`), padded to the widest
    (id 0, -inf), every proposal included: the chosen ones are picked here.
    """

    pack: StepPack
    x0: np.ndarray  # [M] int64
    chosen: np.ndarray  # [M] bool
    lp_ids: np.ndarray  # [L, K + 1] int64
    lp_values: np.ndarray  # [L, K + 1] float32
    lp_ranks: np.ndarray  # [L] int64

    def decided(self, block: int) -> tuple[list[int], list[int]]:
        """(offsets among the block's masked slots, tokens) unmasked now; a
        proposal equal to MASK decides nothing."""
        first = self.pack.first_row[block]
        n = len(self.pack.masked[block])
        x0 = self.x0[first : first + n]
        keep = self.chosen[first : first + n] & (x0 != self.pack.mask_id)
        return np.nonzero(keep)[0].tolist(), x0[keep].tolist()

    def tokens(self, block: int) -> list[int]:
        """The block's open slots after this step."""
        out = list(self.pack.blocks[block].tokens)
        masked = self.pack.masked[block]
        for j, token in zip(*self.decided(block), strict=True):
            out[masked[j]] = token
        return out

    def slot_logprobs(self, block: int) -> SlotLogprobs | None:
        """The decided slots' logprobs, the block's own width; None when the
        block has no masked slot or asked for none."""
        b = self.pack.blocks[block]
        if b.num_logprobs is None or not self.pack.masked[block]:
            return None
        rows, _ = self.decided(block)
        k = self.pack.vocab if b.num_logprobs < 0 else min(b.num_logprobs, self.pack.vocab)
        lp = np.asarray(rows, dtype=np.int64) + self.pack.lp_first[block]
        return SlotLogprobs(
            slots=[self.pack.masked[block][j] for j in rows],
            token_ids=self.lp_ids[lp, : k + 1],
            logprobs=self.lp_values[lp, : k + 1],
            ranks=self.lp_ranks[lp],
        )


def _to_host(packed: torch.Tensor) -> np.ndarray:
    """The step's one device->host transfer."""
    return packed.to("cpu", copy=True).numpy()


def denoise_batch(
    logits: torch.Tensor,
    pack: StepPack,
    generator: torch.Generator | None = None,
    logprobs_mode: str = "raw_logprobs",
    inplace: bool = False,
    cpu_path: bool | None = None,
) -> StepResult:
    """One denoising step of every packed block: `denoise_step_full` batched.

    logits: [M, V], the masked rows of all blocks (`pack_step`'s order).
    With `inplace` the forbidden tokens are written into `logits` (the
    runner's own step tensor) instead of a copy. generator: noise of
    sampled blocks without a `StepNoise`. The number of tensor ops does not
    depend on the number of blocks, and the results reach the host in one
    transfer, except on the CPU path (`cpu_path`, default: logits on the
    CPU), where launches and host reads cost nothing but memory traffic
    does: there proposals run over chunks of `cpu_row_chunk(vocab)` rows (the
    vocabulary-wide temporaries of a whole batch would be fresh pages every
    step), and top-p nuclei are searched among the first candidates with a
    host read per round instead of a full sort. Results are the same.
    """
    if logits.shape[0] != pack.num_rows:
        raise ValueError(f"{pack.num_rows} masked rows but logits for {logits.shape[0]}")
    device = logits.device
    if cpu_path is None:
        cpu_path = device.type == "cpu"
    if pack.num_rows == 0:
        return _from_host(pack, np.zeros(0))
    row_float = pack.row_float.to(device, non_blocking=True)
    row_int = pack.row_int.to(device, non_blocking=True)
    lp_rows = (
        pack.logprob_rows.to(device, non_blocking=True) if pack.logprob_rows.shape[0] else None
    )
    raw = None
    if lp_rows is not None and logprobs_mode.startswith("raw"):
        # Raw logprobs read the network's logits: only the rows that ask are
        # kept aside before the forbidden tokens are written.
        raw = logits.index_select(0, lp_rows).float()
    work = logits.float()
    if work is logits and not inplace:
        work = work.clone()
    work, grammar_rows = _restrict(work, pack, cpu_path)
    x0, confidence, entropy, drawn_from = _propose(
        work, pack, row_float, row_int, generator, cpu_path
    )
    if grammar_rows is not None:
        # A structured request's first masked slot counts as certain in the
        # selection: always unmasked.
        force_rows(confidence, entropy, grammar_rows)
    chosen = select_rows(
        confidence,
        entropy,
        row_int[:, 0],
        pack.request_float.to(device, non_blocking=True),
        pack.request_int.to(device, non_blocking=True),
        pack.strategies,
        pack.width,
    )
    parts = [x0.double(), chosen.double()]
    if lp_rows is not None:
        if raw is not None:
            values = raw
        else:
            if isinstance(drawn_from, list):
                drawn_from = torch.cat(drawn_from)
            values = drawn_from.index_select(0, lp_rows)
        parts += _logprob_parts(pack, values, x0.index_select(0, lp_rows), logprobs_mode)
    return _from_host(pack, _to_host(torch.cat(parts)))


def _restrict(
    work: torch.Tensor, pack: StepPack, cpu_path: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every rule that changes logits before the proposal, in `work` (this
    step's own tensor); returns it and the grammar-masked rows."""
    device = work.device
    # MASK and (below min_tokens) stop ids first: no transform may revive them.
    work[:, pack.mask_id] = float("-inf")
    if pack.forbid.shape[1]:
        forbid = pack.forbid.to(device, non_blocking=True)
        work.index_put_((forbid[0], forbid[1]), torch.tensor(float("-inf"), device=device))
    grammar_rows = None
    if pack.grammar_rows.shape[0]:
        # Structured requests: each one's first masked slot is drawn under its
        # grammar's bitmask, before the transforms as in vLLM's runner.
        grammar_rows = pack.grammar_rows.to(device, non_blocking=True)
        words = pack.grammar_words.to(device, non_blocking=True)
        mask_rows(work, grammar_rows, words, per_row=cpu_path)
    if pack.rule_blocks is not None:
        work = apply_logit_rules(work, pack.rule_blocks, inplace=True)
    return work, grammar_rows


def _propose(
    work: torch.Tensor,
    pack: StepPack,
    row_float: torch.Tensor,
    row_int: torch.Tensor,
    generator: torch.Generator | None,
    cpu_path: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
    """Every row's x0, confidence, entropy and drawing distribution; on the
    CPU path in row chunks (see `denoise_batch`)."""
    sampled_only = pack.any_sampled and not pack.any_greedy
    rows = ProposalRows(
        temperature=row_float[:, 0] if pack.any_sampled else None,
        top_k=row_int[:, 1] if pack.max_top_k else None,
        top_p=row_float[:, 1] if pack.any_top_p else None,
        min_p=row_float[:, 2] if pack.any_min_p else None,
        keys=row_int[:, 2] if pack.any_seeded else None,
        seeded=row_int[:, 3].bool() if pack.any_seeded and pack.any_unseeded else None,
        greedy=None if sampled_only or not pack.any_sampled else row_int[:, 4].bool(),
        all_greedy=not pack.any_sampled,
        max_top_k=pack.max_top_k,
    )
    with_entropy = ENTROPY in pack.strategies
    chunk = cpu_row_chunk(pack.vocab)
    if cpu_path and pack.num_rows > chunk:
        return concat_proposals(
            [
                propose_rows(
                    work[start : start + chunk],
                    rows.rows(start, start + chunk),
                    generator,
                    with_entropy,
                    sync_free=False,
                )
                for start in range(0, pack.num_rows, chunk)
            ]
        )
    return propose_rows(work, rows, generator, with_entropy, sync_free=not cpu_path)


def _logprob_parts(
    pack: StepPack, values: torch.Tensor, chosen: torch.Tensor, logprobs_mode: str
) -> list[torch.Tensor]:
    """The logprob rows' ranks, ids and values, flattened for the one transfer."""
    k = pack.max_logprobs
    ids, vals, ranks = gather_logprobs(values, chosen, k, logprobs_mode.endswith("logprobs"))
    # Columns past a block's own width are vLLM's padding (id 0, -inf).
    device = values.device
    pad = torch.arange(k + 1, device=device)[None, :] >= pack.logprob_width.to(device)[:, None]
    ids = ids.masked_fill(pad, 0)
    vals = vals.float().masked_fill(pad, float("-inf"))
    return [ranks.double(), ids.double().flatten(), vals.double().flatten()]


def _from_host(pack: StepPack, host: np.ndarray) -> StepResult:
    """The step's one transfer, unpacked: x0, chosen, then (if any block asked)
    ranks, ids and values of the logprob rows."""
    m, k = pack.num_rows, pack.max_logprobs
    n = pack.logprob_rows.shape[0] if len(host) > 2 * m else 0
    flat = host[2 * m + n :]
    return StepResult(
        pack,
        host[:m].astype(np.int64),
        host[m : 2 * m] > 0,
        flat[: n * (k + 1)].reshape(n, k + 1).astype(np.int64),
        flat[n * (k + 1) :].reshape(n, k + 1).astype(np.float32),
        host[2 * m : 2 * m + n].astype(np.int64),
    )


def denoise_step(
    tokens: torch.Tensor,
    masked_logits: torch.Tensor,
    mask_id: int,
    step: int,
    denoising: Denoising,
    sampling: Sampling,
    generator: torch.Generator | StepNoise | None = None,
    output_rules: OutputRules | None = None,
    first_output_pos: int = 0,
) -> torch.Tensor:
    """One denoising step of one block.

    tokens: [L] the block's open slots (MASK where undecided); callers
    leave out a prompt tail sharing the block, which is context even if it
    holds the MASK id. masked_logits: [M, V] the network's logits at the
    M MASK slots, in position order (no shift: a slot's logits predict that
    slot). Only masked slots are ever written, so the caller computes no
    logits (no lm_head rows) for decided ones. first_output_pos: index of
    tokens[0] in the generated output (for min_tokens). Returns the new tokens.
    """
    new_tokens, _ = denoise_step_full(
        tokens,
        masked_logits,
        mask_id,
        step,
        denoising,
        sampling,
        generator,
        output_rules=output_rules,
        first_output_pos=first_output_pos,
    )
    return new_tokens


def denoise_step_full(
    tokens: torch.Tensor,
    masked_logits: torch.Tensor,
    mask_id: int,
    step: int,
    denoising: Denoising,
    sampling: Sampling,
    generator: torch.Generator | StepNoise | None = None,
    context: RuleContext | None = None,
    num_logprobs: int | None = None,
    logprobs_mode: str = "raw_logprobs",
    output_rules: OutputRules | None = None,
    first_output_pos: int = 0,
    grammar_mask: np.ndarray | None = None,
) -> tuple[torch.Tensor, SlotLogprobs | None]:
    """`denoise_step` with vLLM's logits transforms and logprobs.

    A batch of one for `denoise_batch`. The transforms (`logit_rules`)
    change every masked row before the proposal, so they move confidence
    and thus which slots unmask. With num_logprobs set (vLLM's `logprobs`;
    -1 = whole vocabulary), returns the logprobs of the slots unmasked this
    step in the distribution of this step: `raw_*` from the network's
    logits, `processed_*` from the logits the token was drawn from (after
    the transforms; when sampling also after temperature, min_p,
    top-k/top-p), as vLLM's logprobs_mode. generator: a `StepNoise` (seeded
    noise) or a torch generator (None: the default one) for sampling.
    grammar_mask: a structured request's bitmask for its first masked slot
    (`BlockStep.grammar_mask`); the caller applies `grammar_rule`'s
    left-to-right acceptance to the result.
    """
    block = BlockStep(
        tokens=tokens.tolist(),
        step=step,
        denoising=denoising,
        sampling=sampling,
        noise=generator if isinstance(generator, StepNoise) else None,
        output_rules=output_rules,
        first_output_pos=first_output_pos,
        context=context,
        num_logprobs=num_logprobs,
        grammar_mask=grammar_mask,
    )
    gen = generator if isinstance(generator, torch.Generator) else None
    new_tokens, logprobs = denoise_block(block, masked_logits, mask_id, gen, logprobs_mode)
    return torch.tensor(new_tokens, dtype=tokens.dtype), logprobs


def denoise_block(
    block: BlockStep,
    masked_logits: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    logprobs_mode: str = "raw_logprobs",
) -> tuple[list[int], SlotLogprobs | None]:
    """One block's step, given as a `BlockStep`: a batch of one."""
    pack = pack_step([block], [masked_logits.shape[0]], mask_id, masked_logits.shape[-1])
    if pack.num_rows == 0:
        return list(block.tokens), None
    result = denoise_batch(masked_logits, pack, generator, logprobs_mode)
    return result.tokens(0), result.slot_logprobs(0)

"""Proposals: each masked slot's token (x0), confidence and entropy.

Owns the draw of every masked row at once (`propose_rows`: temperature,
min_p, top-k/top-p, greedy argmax or a Gumbel-max draw with the seeded or
generator noise), its per-row parameters on the logits' device (`ProposalRows`),
the single-request form (`propose`), and the CPU path's row chunks
(`cpu_row_chunk`, `concat_proposals`). Pure torch, no vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vllm_sdar.algorithm.denoising import Sampling
from vllm_sdar.algorithm.filtering import filter_rows
from vllm_sdar.algorithm.logit_rules import apply_min_p
from vllm_sdar.algorithm.noise import StepNoise, _log_exponential_noise

# Logits per proposal chunk on the CPU path: one block of a Qwen3
# vocabulary. A chunk's vocabulary-wide temporaries (4 x 151,936 x 4 bytes
# ~ 2.4 MB) stay in cache and in reused heap memory; a whole batch's would
# be fresh pages every step (glibc maps blocks over 32 MB anew), which made
# a batched CPU step slower than the per-request loop it replaces.
CPU_CHUNK_ELEMENTS = 4 * 151_936


def cpu_row_chunk(vocab: int) -> int:
    """Rows per CPU chunk: the element budget's worth, at least one block.

    Sized by elements, not rows: a small vocabulary (the toy models' 24 ids)
    takes the whole batch in one chunk, where fixed 4-row chunks cost ~30
    launches of ~10 ops per step at batch 64, more than their arithmetic.
    """
    return max(4, CPU_CHUNK_ELEMENTS // max(vocab, 1))


Proposal = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]


def concat_proposals(
    parts: list[Proposal],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """The chunks' proposals; the drawn-from logits stay a list (only
    processed logprobs read them, and the copy is vocabulary-wide)."""
    x0, confidence, entropy, drawn_from = zip(*parts, strict=True)
    return (
        torch.cat(x0),
        torch.cat(confidence),
        None if entropy[0] is None else torch.cat(entropy),
        list(drawn_from),
    )


@dataclass(frozen=True)
class ProposalRows:
    """Per-row parameters on the logits' device, None where no row uses them."""

    temperature: torch.Tensor | None  # [M]
    top_k: torch.Tensor | None  # [M]
    top_p: torch.Tensor | None  # [M]
    min_p: torch.Tensor | None  # [M]
    keys: torch.Tensor | None  # [M] seeded noise keys
    seeded: torch.Tensor | None  # [M] bool, None when every sampled row is seeded
    greedy: torch.Tensor | None  # [M] bool, None when all rows are greedy or none
    all_greedy: bool
    max_top_k: int

    def rows(self, start: int, end: int) -> ProposalRows:
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:end]

        return ProposalRows(
            part(self.temperature),
            part(self.top_k),
            part(self.top_p),
            part(self.min_p),
            part(self.keys),
            part(self.seeded),
            part(self.greedy),
            self.all_greedy,
            self.max_top_k,
        )


def propose_rows(
    logits: torch.Tensor,
    rows: ProposalRows,
    generator: torch.Generator | None,
    with_entropy: bool,
    sync_free: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """`propose` on every row at once: (x0, confidence, entropy, drawn-from).

    The last is the logits each token is drawn from (after temperature,
    min_p, top-k/top-p; the input itself for greedy rows): processed logprobs.
    """
    scaled = logits if rows.temperature is None else logits / rows.temperature[:, None]
    if rows.min_p is not None:
        scaled = apply_min_p(scaled, rows.min_p)
    # One max pass gives the greedy token (torch.max: the first maximum,
    # like argmax but several times faster on the CPU) and the shift of the
    # log-sum-exp, whose exponentials serve the entropy too.
    row_max, x0 = torch.max(scaled, dim=-1)
    shift = torch.where(torch.isfinite(row_max), row_max, 0.0)  # as logsumexp
    exps = torch.sub(scaled, shift[:, None]).exp_()
    total = exps.sum(dim=-1)
    lse = shift + torch.log(total)
    drawn_from = scaled
    top = row_max
    if not rows.all_greedy:
        drawn_from = filter_rows(scaled, rows.top_k, rows.max_top_k, rows.top_p, sync_free)
        # Gumbel-max (argmax of log p - log q, q ~ Exp(1)): an exact
        # categorical draw, the exponential race argmax p / q in log space.
        log_q = _log_exponential_noise(
            rows.keys, rows.seeded, generator, tuple(scaled.shape), scaled.device
        )
        drawn = torch.max(torch.sub(drawn_from, log_q, out=log_q), dim=-1).indices
        del log_q
        x0 = drawn if rows.greedy is None else torch.where(rows.greedy, x0, drawn)
        top = scaled.gather(-1, x0[:, None]).squeeze(-1)
    confidence = torch.exp(top - lse)
    entropy = None
    if with_entropy:
        # H = lse - sum(p * x); nansum drops 0 * -inf from masked-out logits.
        entropy = lse - torch.nansum(exps.mul_(scaled), dim=-1) / total
    return x0, confidence, entropy, drawn_from


def propose(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | StepNoise | None = None,
    with_entropy: bool = True,
    min_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw x0 for each row of [n, V] logits: (x0, confidence, entropy).

    Confidence is the probability of x0 under the *unfiltered*
    softmax(logits / T) (spec choice); entropy is of that same distribution
    (None unless asked for: only entropy_bounded reads it). Greedy = argmax
    with confidence softmax(logits)[argmax] (the release's "greedy": top_k = 1
    at temperature 1). min_p (sampling only, as in vLLM, where it is an
    argmax-invariant processor) removes tokens after temperature and, unlike
    top-k/top-p, before confidence: it is one of the logits transforms.
    A `StepNoise` generator seeds row i as slot i of its block.

    Written as max + logsumexp (two passes over the vocabulary) rather than a
    full log_softmax: this runs for every open slot of every request each
    engine step, over vocabularies of ~152k.
    """
    logits = logits.float()
    n, vocab = logits.shape
    device = logits.device
    greedy = sampling.greedy
    top_k = sampling.top_k if not greedy and 0 < sampling.top_k < vocab else 0
    top_p = sampling.top_p if not greedy and 0.0 < sampling.top_p < 1.0 else 1.0
    noise = generator if isinstance(generator, StepNoise) else None
    rows = ProposalRows(
        temperature=None if greedy else torch.full((n,), sampling.temperature, device=device),
        top_k=torch.full((n,), top_k, dtype=torch.long, device=device) if top_k else None,
        top_p=torch.full((n,), top_p, device=device) if top_p < 1.0 else None,
        min_p=torch.full((n,), min_p, device=device) if min_p > 0.0 and not greedy else None,
        keys=None
        if noise is None
        else torch.tensor([noise.slot_key(i) for i in range(n)], dtype=torch.long, device=device),
        seeded=None,
        greedy=None,
        all_greedy=greedy,
        max_top_k=top_k,
    )
    gen = generator if isinstance(generator, torch.Generator) else None
    x0, confidence, entropy, _ = propose_rows(
        logits, rows, gen, with_entropy, sync_free=device.type != "cpu"
    )
    return x0, confidence, entropy

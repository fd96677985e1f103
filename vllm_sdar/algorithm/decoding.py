"""The SDAR decoding algorithm as pure tensor functions.

This is the only module that decides which tokens of a block get unmasked.
Both the reference decoder (`vllm_sdar.algorithm.reference`) and the vLLM model runner
(`vllm_sdar.engine.runner`) call `denoise_step`, so the two paths agree by
construction on everything except the network's logits.

No vLLM and no transformers imports here: the module is testable on
handcrafted logits. Semantics follow `shared/spec/sdar-decoding.md`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from vllm_sdar.algorithm.logit_rules import BlockRows, LogitRules, apply_logit_rules, apply_min_p

# First candidate count when searching a top-p nucleus (see filter_top_k_top_p).
NUCLEUS_FIRST_K = 1024

STRATEGIES = (
    "low_confidence_static",
    "low_confidence_dynamic",
    "sequential",
    "entropy_bounded",
)


@dataclass(frozen=True)
class Sampling:
    """How one masked slot proposes its token (x0) and confidence."""

    temperature: float = 0.0  # 0 = greedy (argmax), as vLLM defines it
    top_k: int = 0  # <= 0: off
    top_p: float = 1.0  # >= 1: off
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Denoising:
    """How one block is denoised: schedule and unmasking rule."""

    block_size: int = 4
    steps: int = 4
    strategy: str = "low_confidence_dynamic"
    threshold: float = 0.85
    eb_threshold: float = 0.35


def quota_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens to unmask at each step: B // S each, the first B % S get one more."""
    if not 1 <= steps <= block_size:
        raise ValueError(f"denoising steps must be in [1, {block_size}], got {steps}")
    base, extra = divmod(block_size, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def first_block(prompt_len: int, block_size: int) -> tuple[int, int]:
    """(start of the first generated block, prompt tokens inside it).

    Blocks are aligned to absolute position 0, so the prompt's tail
    (prompt_len mod B tokens) shares the first generated block with MASKs.
    """
    start = (prompt_len // block_size) * block_size
    return start, prompt_len - start


def block_causal_mask(
    q_start: int, q_len: int, k_len: int, block_size: int, device=None
) -> torch.Tensor:
    """Bool [q_len, k_len]: True where query may attend key.

    A query in block j sees every key in blocks 0..j (both directions inside
    its own block); keys are positions 0..k_len-1.
    """
    q_blk = torch.arange(q_start, q_start + q_len, device=device) // block_size
    k_blk = torch.arange(k_len, device=device) // block_size
    return k_blk[None, :] <= q_blk[:, None]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering on [n, V] logits; removed -> -inf."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        # The nucleus is found among the k most likely tokens, k growing
        # until every row's nucleus ends inside them: a trained model's
        # nucleus is a few hundred tokens, so this avoids sorting ~152k
        # logits per slot (only a flat distribution needs the full sort).
        k = min(vocab, NUCLEUS_FIRST_K)
        while True:
            if k < vocab:
                top, order = torch.topk(logits, k, dim=-1)
            else:
                top, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.exp(top - lse)
            # Probability mass strictly before each token: a token is kept
            # while the mass before it has not reached top_p, so the top
            # token always is.
            mass_before = torch.cumsum(probs, dim=-1) - probs
            keep_sorted = mass_before < top_p
            if k == vocab or not keep_sorted[:, -1].any():
                break
            k = k * 16 if k * 16 < vocab // 4 else vocab
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def step_generator(seed: int, block_start: int, step: int) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, block, step).

    Deriving the stream from the position instead of carrying generator
    state makes seeded output independent of batch composition, preemption
    and recompute, tensor-parallel rank and device.
    """
    mixed = hash((int(seed), int(block_start), int(step))) & ((1 << 63) - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def propose(
    logits: torch.Tensor,
    sampling: Sampling,
    generator: torch.Generator | None = None,
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

    Written as max + logsumexp (two passes over the vocabulary) rather than a
    full log_softmax: this runs for every open slot of every request each
    engine step, over vocabularies of ~152k.
    """
    logits = logits.float()
    scaled = logits if sampling.greedy else logits / sampling.temperature
    if min_p > 0.0 and not sampling.greedy:
        scaled = apply_min_p(scaled, torch.full((scaled.shape[0],), float(min_p)))
    lse = torch.logsumexp(scaled, dim=-1)
    if sampling.greedy:
        top, x0 = torch.max(scaled, dim=-1)  # first maximum, like argmax
    else:
        filtered = filter_top_k_top_p(scaled, sampling.top_k, sampling.top_p)
        target = torch.softmax(filtered, dim=-1)
        # Exponential race (argmax p / q, q ~ Exp(1)) is an exact categorical
        # draw; the noise is drawn on the CPU so a seed means the same tokens
        # on every device.
        noise = torch.empty(target.shape, dtype=torch.float32)
        noise.exponential_(generator=generator)
        x0 = torch.argmax(target / noise.to(target.device), dim=-1)
        top = scaled.gather(-1, x0[:, None]).squeeze(-1)
    confidence = torch.exp(top - lse)
    entropy = None
    if with_entropy:
        probs = torch.exp(scaled - lse[:, None])
        # H = lse - sum(p * x); nansum drops 0 * -inf from masked-out logits.
        entropy = lse - torch.nansum(probs * scaled, dim=-1)
    return x0, confidence, entropy


def _top_by_confidence(confidence: torch.Tensor, k: int) -> torch.Tensor:
    # Stable sort keeps position order among equal confidences, so ties
    # break toward the lower position (spec choice).
    order = torch.sort(confidence, descending=True, stable=True).indices
    return order[:k]


def select_slots(
    confidence: torch.Tensor,
    entropy: torch.Tensor | None,
    quota: int,
    denoising: Denoising,
) -> torch.Tensor:
    """Indices (into the masked slots, in position order) to unmask this step."""
    n = confidence.shape[0]
    quota = min(quota, n)
    strategy = denoising.strategy
    if strategy == "low_confidence_static":
        chosen = _top_by_confidence(confidence, quota)
    elif strategy == "low_confidence_dynamic":
        above = torch.nonzero(confidence > denoising.threshold).flatten()
        chosen = above if above.numel() >= quota else _top_by_confidence(confidence, quota)
    elif strategy == "sequential":
        chosen = torch.arange(quota)
    elif strategy == "entropy_bounded":
        if entropy is None:
            raise ValueError("entropy_bounded needs the slots' entropies")
        order = torch.sort(entropy, stable=True).indices
        within = torch.cumsum(entropy[order], dim=0) <= denoising.eb_threshold
        chosen = order[: max(1, int(within.sum()))]
    else:
        raise ValueError(f"unknown remasking_strategy {strategy!r}")
    return torch.sort(chosen.to(torch.long)).values


@dataclass(frozen=True)
class OutputRules:
    """Tokens a slot may never be given, whatever the network predicts.

    vLLM's contract for `min_tokens`: no stop token (EOS or
    `stop_token_ids`) ends the output before `min_tokens` tokens, so a stop
    id cannot be proposed at an output position below `min_tokens`.
    """

    min_tokens: int = 0
    stop_ids: tuple[int, ...] = ()


def forbid_invalid_tokens(
    masked_logits: torch.Tensor,
    mask_id: int,
    output_positions: torch.Tensor,
    rules: OutputRules | None = None,
) -> torch.Tensor:
    """Set forbidden logits to -inf on [M, V] rows before any proposal.

    MASK is never a valid output: a slot proposed as MASK stays open and the
    block would never finish. Stop ids are forbidden at rows whose output
    position (index in the generated text, [M]) is below `min_tokens`.
    Confidence and entropy are then those of the distribution without the
    forbidden tokens (README, "Decoding rules, safety nets and refusals").
    """
    out = masked_logits.clone()
    out[:, mask_id] = float("-inf")
    if rules is not None and rules.min_tokens > 0 and rules.stop_ids:
        early = (output_positions < rules.min_tokens).to(out.device)
        if bool(early.any()):
            stops = torch.tensor(rules.stop_ids, dtype=torch.long, device=out.device)
            rows = torch.nonzero(early).flatten()
            out[rows[:, None], stops[None, :]] = float("-inf")
    return out


def denoise_step(
    tokens: torch.Tensor,
    masked_logits: torch.Tensor,
    mask_id: int,
    step: int,
    denoising: Denoising,
    sampling: Sampling,
    generator: torch.Generator | None = None,
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


# --- logits transforms and logprobs (sampling parity, issue 15) -------------


@dataclass(frozen=True)
class RuleContext:
    """What a block's logits transforms read besides the block itself.

    generated: the request's final output tokens (or only their trailing
    `rules.history_needed`); prompt: the prompt ids, for repetition_penalty.
    """

    rules: LogitRules
    generated: Sequence[int] = ()
    prompt: Sequence[int] = ()


@dataclass(frozen=True)
class SlotLogprobs:
    """Logprobs of the slots one step unmasked, rows in position order.

    Column 0 is the chosen token, then the top `num_logprobs` (vLLM's
    layout: LogprobsLists); rank is 1 + the number of tokens more likely.
    """

    slots: list[int]  # offsets into the block's open slots
    token_ids: torch.Tensor  # [n, k + 1] int64
    logprobs: torch.Tensor  # [n, k + 1] float32
    ranks: torch.Tensor  # [n] int64


def gather_logprobs(
    values: torch.Tensor, chosen: torch.Tensor, num_logprobs: int, as_logprobs: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's Sampler.gather_logprobs on [n, V] logits: (ids, values, ranks)."""
    if as_logprobs:
        values = torch.log_softmax(values.float(), dim=-1)
    k = values.shape[-1] if num_logprobs < 0 else min(num_logprobs, values.shape[-1])
    top_vals, top_ids = torch.topk(values, k, dim=-1)
    own = values.gather(-1, chosen[:, None])
    ranks = (values >= own).sum(-1)
    ids = torch.cat((chosen[:, None], top_ids), dim=1)
    return ids, torch.cat((own, top_vals), dim=1), ranks


def denoise_step_full(
    tokens: torch.Tensor,
    masked_logits: torch.Tensor,
    mask_id: int,
    step: int,
    denoising: Denoising,
    sampling: Sampling,
    generator: torch.Generator | None = None,
    context: RuleContext | None = None,
    num_logprobs: int | None = None,
    logprobs_mode: str = "raw_logprobs",
    output_rules: OutputRules | None = None,
    first_output_pos: int = 0,
) -> tuple[torch.Tensor, SlotLogprobs | None]:
    """`denoise_step` with vLLM's logits transforms and logprobs.

    The transforms (`logit_rules`) change every masked row before the
    proposal, so they move confidence and thus which slots unmask. With
    num_logprobs set (vLLM's `logprobs`; -1 = whole vocabulary), returns
    the logprobs of the slots unmasked this step in the distribution of
    this step: `raw_*` from the network's logits, `processed_*` from the
    logits the token was drawn from (after the transforms; when sampling
    also after temperature, min_p, top-k/top-p), as vLLM's logprobs_mode.
    """
    masked = torch.nonzero(tokens == mask_id).flatten()
    if masked.numel() != masked_logits.shape[0]:
        raise ValueError(
            f"{masked.numel()} masked slots but logits for {masked_logits.shape[0]} rows"
        )
    if masked.numel() == 0:
        return tokens, None
    rules = context.rules if context is not None else None
    # MASK and (below min_tokens) stop ids first: no transform may revive them.
    logits = forbid_invalid_tokens(masked_logits, mask_id, first_output_pos + masked, output_rules)
    if rules is not None and rules.changes_logits:
        rows = BlockRows(rules, tokens.tolist(), mask_id, context.generated, context.prompt)
        logits = apply_logit_rules(logits.float(), [rows])
    min_p = rules.min_p if rules is not None else 0.0
    quota = quota_schedule(denoising.block_size, denoising.steps)
    step_quota = quota[min(step, len(quota) - 1)]
    x0, confidence, entropy = propose(
        logits,
        sampling,
        generator,
        with_entropy=denoising.strategy == "entropy_bounded",
        min_p=min_p,
    )
    chosen = select_slots(
        confidence.cpu(), None if entropy is None else entropy.cpu(), step_quota, denoising
    )
    out = tokens.clone()
    out[masked[chosen]] = x0.cpu()[chosen].to(out.dtype)
    if num_logprobs is None:
        return out, None
    # Rows of slots this step decided (a proposal equal to MASK decides nothing).
    chosen = chosen[x0.cpu()[chosen] != mask_id]
    rows = chosen.to(masked_logits.device)
    if logprobs_mode.startswith("raw"):
        values = masked_logits[rows].float()
    else:
        values = logits[rows].float()
        if not sampling.greedy:
            values = values / sampling.temperature
            if min_p > 0.0:
                values = apply_min_p(values, torch.full((values.shape[0],), float(min_p)))
            values = filter_top_k_top_p(values, sampling.top_k, sampling.top_p)
    ids, vals, ranks = gather_logprobs(
        values, x0[rows], num_logprobs, logprobs_mode.endswith("logprobs")
    )
    slots = masked[chosen].tolist()
    return out, SlotLogprobs(slots, ids.cpu(), vals.cpu(), ranks.cpu())


def truncate_at_stop(
    tokens: Sequence[int], stop_ids: Iterable[int], max_tokens: int | None
) -> tuple[list[int], str | None]:
    """Cut generated tokens at the first stop token (kept) or at max_tokens.

    Returns (tokens, finish_reason) with reason "stop", "length" or None.
    Everything after the first stop token is dropped (spec choice).
    """
    stops = set(stop_ids)
    out = list(tokens)
    for i, tok in enumerate(out):
        if max_tokens is not None and i >= max_tokens:
            return out[:i], "length"
        if tok in stops:
            return out[: i + 1], "stop"
    if max_tokens is not None and len(out) >= max_tokens:
        return out[:max_tokens], "length"
    return out, None

"""The SDAR decoding algorithm as pure tensor functions.

This is the only module that decides which tokens of a block get unmasked.
One engine step unmasks the blocks of every scheduled request at once:
`pack_step` turns the requests' parameters into a few tensors (host side)
and `denoise_batch` runs the step on the concatenated logits of all masked
slots, with a number of tensor ops that does not grow with the batch and a
single device->host transfer. The vLLM model runner
(`vllm_sdar.engine.runner`) calls `denoise_batch`; the reference decoder
(`vllm_sdar.algorithm.reference`) calls `denoise_step_full`, a batch of one
over the same code, so the two paths agree by construction on everything
except the network's logits.

No vLLM and no transformers imports here: the module is testable on
handcrafted logits. Semantics follow `shared/spec/sdar-decoding.md`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
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


def _filter_rows(
    logits: torch.Tensor,
    top_k: torch.Tensor | None,
    max_k: int,
    top_p: torch.Tensor | None,
    sync_free: bool,
) -> torch.Tensor:
    """Per-row top-k then top-p on [n, V] logits; removed -> -inf.

    top_k: [n] int64, 0 where the row does not filter; max_k its largest
    value. top_p: [n] float32, >= 1 where the row does not filter.
    """
    vocab = logits.shape[-1]
    if top_k is not None and max_k > 0:
        # kth largest of each row from one topk of the largest k; ties with
        # the kth value are kept (vLLM's rule).
        top = torch.topk(logits, max_k, dim=-1).values
        kth = top.gather(-1, (top_k - 1).clamp(min=0)[:, None])
        kth = kth.masked_fill((top_k <= 0)[:, None], float("-inf"))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        active = top_p < 1.0
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        if sync_free:
            # One full sort: no data-dependent size, so no host sync.
            top, order = torch.sort(logits, dim=-1, descending=True)
            keep_sorted = _nucleus(top, lse, top_p)
        else:
            # The nucleus is found among the k most likely tokens, k growing
            # until every row's nucleus ends inside them: a trained model's
            # nucleus is a few hundred tokens, so this avoids sorting ~152k
            # logits per slot (only a flat distribution needs the full sort).
            # Each round reads a flag on the host: free on the CPU only.
            k = min(vocab, NUCLEUS_FIRST_K)
            while True:
                if k < vocab:
                    top, order = torch.topk(logits, k, dim=-1)
                else:
                    top, order = torch.sort(logits, dim=-1, descending=True)
                keep_sorted = _nucleus(top, lse, top_p)
                if k == vocab or not bool((keep_sorted[:, -1] & active).any()):
                    break
                k = k * 16 if k * 16 < vocab // 4 else vocab
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, keep_sorted)
        keep |= ~active[:, None]
        logits = logits.masked_fill(~keep, float("-inf"))
    return logits


def _nucleus(top: torch.Tensor, lse: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Which of the descending-sorted logits `top` lie in each row's nucleus."""
    probs = torch.exp(top - lse)
    # Probability mass strictly before each token: a token is kept while the
    # mass before it has not reached top_p, so the top token always is.
    mass_before = torch.cumsum(probs, dim=-1) - probs
    return mass_before < top_p[:, None]


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering on [n, V] logits; removed -> -inf."""
    n, vocab = logits.shape
    k = top_k if 0 < top_k < vocab else 0
    p = top_p if 0.0 < top_p < 1.0 else 1.0
    return _filter_rows(
        logits,
        torch.full((n,), k, dtype=torch.long, device=logits.device) if k else None,
        k,
        torch.full((n,), p, device=logits.device) if p < 1.0 else None,
        sync_free=logits.device.type != "cpu",
    )


# --- seeded noise -------------------------------------------------------------
#
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


# --- one batched step -----------------------------------------------------------

STRATEGY_CODES = {name: code for code, name in enumerate(STRATEGIES)}
_STATIC, _DYNAMIC, _SEQUENTIAL, _ENTROPY = range(4)


@dataclass(frozen=True)
class BlockStep:
    """One request's block in a batched unmasking step (host-side inputs).

    tokens: the block's open slots (MASK where undecided), as `denoise_step`.
    noise: the seeded noise key of a sampled request (None: drawn from the
    step's generator). first_output_pos: index of tokens[0] in the output.
    """

    tokens: Sequence[int]
    step: int
    denoising: Denoising
    sampling: Sampling
    noise: StepNoise | None = None
    output_rules: OutputRules | None = None
    first_output_pos: int = 0
    context: RuleContext | None = None
    num_logprobs: int | None = None


@dataclass
class StepPack:
    """A step's per-row and per-request parameters as tensors (host side).

    Rows are the masked slots of every block, block after block, in
    position order; `requests` are the blocks with at least one row. The
    flags say which features the step uses, so `denoise_batch` only runs
    what some request needs (as vLLM's sampler does with all_greedy).
    """

    mask_id: int
    vocab: int
    blocks: list[BlockStep]
    masked: list[list[int]]  # per block: offsets of its masked slots
    first_row: list[int]  # per block: its first row
    num_rows: int
    width: int  # most masked slots of one block
    row_float: torch.Tensor  # [M, 3]: temperature (1 if greedy), top_p, min_p
    row_int: torch.Tensor  # [M, 5]: padded index, top_k, noise key, seeded, greedy
    request_float: torch.Tensor  # [R, 2]: threshold, eb_threshold
    request_int: torch.Tensor  # [R, 2]: quota, strategy code
    forbid: torch.Tensor  # [2, P]: (row, token) pairs set to -inf (stop ids)
    logprob_rows: torch.Tensor  # [L]: rows of the blocks that ask for logprobs
    logprob_width: torch.Tensor  # [L]: 1 + that block's number of logprobs
    strategies: frozenset[int] = frozenset()
    any_greedy: bool = False
    any_sampled: bool = False
    any_unseeded: bool = False
    any_seeded: bool = False
    max_top_k: int = 0
    any_top_p: bool = False
    any_min_p: bool = False
    max_logprobs: int = 0  # widest logprobs row minus the chosen column
    rule_blocks: list[BlockRows] | None = None
    lp_first: list[int] = field(default_factory=list)  # per block: first logprob row


def pack_step(
    blocks: Sequence[BlockStep], masked_rows: Sequence[int], mask_id: int, vocab: int
) -> StepPack:
    """Build the step's parameter tensors once, on the host.

    masked_rows: the number of logits rows the caller has for each block,
    which must be its number of masked slots.
    """
    blocks = list(blocks)
    masked = [[i for i, t in enumerate(b.tokens) if t == mask_id] for b in blocks]
    for slots, rows in zip(masked, masked_rows, strict=True):
        if len(slots) != rows:
            raise ValueError(f"{len(slots)} masked slots but logits for {rows} rows")
    width = max((len(m) for m in masked), default=0)
    row_float: list[tuple[float, float, float]] = []
    row_int: list[tuple[int, int, int, int, int]] = []
    request_float: list[tuple[float, float]] = []
    request_int: list[tuple[int, int]] = []
    forbid: list[tuple[int, int]] = []
    lp_rows: list[int] = []
    lp_width: list[int] = []
    first_row: list[int] = []
    lp_first: list[int] = []
    strategies: set[int] = set()
    any_greedy = any_sampled = any_seeded = any_unseeded = False
    any_top_p = any_min_p = any_rules = False
    max_top_k = max_logprobs = 0
    for b, slots in zip(blocks, masked, strict=True):
        first_row.append(len(row_int))
        lp_first.append(len(lp_rows))
        if not slots:
            continue
        strategy = STRATEGY_CODES.get(b.denoising.strategy)
        if strategy is None:
            raise ValueError(f"unknown remasking_strategy {b.denoising.strategy!r}")
        strategies.add(strategy)
        quota = quota_schedule(b.denoising.block_size, b.denoising.steps)
        request = len(request_int)
        request_int.append((min(quota[min(b.step, len(quota) - 1)], len(slots)), strategy))
        request_float.append((b.denoising.threshold, b.denoising.eb_threshold))
        s = b.sampling
        rules = b.context.rules if b.context is not None else None
        any_rules = any_rules or (rules is not None and rules.changes_logits)
        greedy = s.greedy
        top_k = 0 if greedy or not 0 < s.top_k < vocab else s.top_k
        top_p = 1.0 if greedy or not 0.0 < s.top_p < 1.0 else s.top_p
        min_p = 0.0 if greedy or rules is None else rules.min_p
        any_greedy |= greedy
        any_sampled |= not greedy
        any_seeded |= not greedy and b.noise is not None
        any_unseeded |= not greedy and b.noise is None
        max_top_k = max(max_top_k, top_k)
        any_top_p |= top_p < 1.0
        any_min_p |= min_p > 0.0
        out = b.output_rules
        early_stops = out.stop_ids if out is not None and out.min_tokens > 0 else ()
        nlp = b.num_logprobs
        if nlp is not None:
            k = vocab if nlp < 0 else min(nlp, vocab)
            max_logprobs = max(max_logprobs, k)
        seeded = b.noise is not None and not greedy
        for j, slot in enumerate(slots):
            row = len(row_int)
            key = b.noise.slot_key(slot) if seeded else 0
            row_float.append((s.temperature if not greedy else 1.0, top_p, min_p))
            row_int.append((request * width + j, top_k, key, int(seeded), int(greedy)))
            if b.first_output_pos + slot < (out.min_tokens if out is not None else 0):
                forbid.extend((row, stop) for stop in early_stops)
            if nlp is not None:
                lp_rows.append(row)
                lp_width.append(k + 1)
    rule_blocks = None
    if any_rules:
        rule_blocks = [
            BlockRows(
                b.context.rules if b.context is not None else _NO_RULES,
                list(b.tokens),
                mask_id,
                b.context.generated if b.context is not None else (),
                b.context.prompt if b.context is not None else (),
            )
            for b, slots in zip(blocks, masked, strict=True)
            if slots
        ]
    return StepPack(
        mask_id=mask_id,
        vocab=vocab,
        blocks=blocks,
        masked=masked,
        first_row=first_row,
        num_rows=len(row_int),
        width=width,
        row_float=torch.tensor(row_float, dtype=torch.float32).reshape(-1, 3),
        row_int=torch.tensor(row_int, dtype=torch.long).reshape(-1, 5),
        request_float=torch.tensor(request_float, dtype=torch.float32).reshape(-1, 2),
        request_int=torch.tensor(request_int, dtype=torch.long).reshape(-1, 2),
        forbid=torch.tensor(forbid, dtype=torch.long).reshape(-1, 2).T,
        logprob_rows=torch.tensor(lp_rows, dtype=torch.long),
        logprob_width=torch.tensor(lp_width, dtype=torch.long),
        strategies=frozenset(strategies),
        any_greedy=any_greedy,
        any_sampled=any_sampled,
        any_unseeded=any_unseeded,
        any_seeded=any_seeded,
        max_top_k=max_top_k,
        any_top_p=any_top_p,
        any_min_p=any_min_p,
        max_logprobs=max_logprobs,
        rule_blocks=rule_blocks,
        lp_first=lp_first,
    )


_NO_RULES = LogitRules()


@dataclass(frozen=True)
class _Rows:
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

    def rows(self, start: int, end: int) -> _Rows:
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:end]

        return _Rows(
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


def _propose_rows(
    logits: torch.Tensor,
    rows: _Rows,
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
        drawn_from = _filter_rows(scaled, rows.top_k, rows.max_top_k, rows.top_p, sync_free)
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
    rows = _Rows(
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
    x0, confidence, entropy, _ = _propose_rows(
        logits, rows, gen, with_entropy, sync_free=device.type != "cpu"
    )
    return x0, confidence, entropy


def _padded(
    values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int], fill: float
) -> torch.Tensor:
    """Rows scattered into a [requests, width] layout, `fill` elsewhere."""
    out = values.new_full((shape[0] * shape[1],), fill)
    out[index] = values
    return out.view(shape)


def _select_rows(
    confidence: torch.Tensor,
    entropy: torch.Tensor | None,
    padded_index: torch.Tensor,
    request_float: torch.Tensor,
    request_int: torch.Tensor,
    strategies: frozenset[int],
    width: int,
) -> torch.Tensor:
    """`select_slots` of every request at once: [M] bool, True = unmask now.

    Each request's rows are laid out on one row of a [R, width] table
    (position order, padding after), so sorting, ranking and prefix sums
    act per request in a constant number of ops and give exactly the
    per-request results: stable sorts break ties toward lower positions.
    """
    shape = (request_int.shape[0], width)
    quota = request_int[:, 0:1]
    code = request_int[:, 1:2]
    cols = torch.arange(width, device=confidence.device).expand(shape)
    chosen = torch.zeros(shape, dtype=torch.bool, device=confidence.device)

    def rank_of(order: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(order).scatter_(1, order, cols)

    if strategies & {_STATIC, _DYNAMIC}:
        conf = _padded(confidence, padded_index, shape, -1.0)  # padding ranks last
        top = rank_of(torch.sort(conf, dim=1, descending=True, stable=True).indices) < quota
        if _STATIC in strategies:
            chosen = torch.where(code == _STATIC, top, chosen)
        if _DYNAMIC in strategies:
            above = conf > request_float[:, 0:1]
            enough = above.sum(dim=1, keepdim=True) >= quota
            chosen = torch.where(code == _DYNAMIC, torch.where(enough, above, top), chosen)
    if _SEQUENTIAL in strategies:
        chosen = torch.where(code == _SEQUENTIAL, cols < quota, chosen)
    if _ENTROPY in strategies:
        if entropy is None:
            raise ValueError("entropy_bounded needs the slots' entropies")
        ent = _padded(entropy, padded_index, shape, float("inf"))  # padding sums last
        ascending, order = torch.sort(ent, dim=1, stable=True)
        within = torch.cumsum(ascending, dim=1) <= request_float[:, 1:2]
        count = within.sum(dim=1, keepdim=True).clamp(min=1)
        chosen = torch.where(code == _ENTROPY, rank_of(order) < count, chosen)
    return chosen.view(-1)[padded_index]


def select_slots(
    confidence: torch.Tensor,
    entropy: torch.Tensor | None,
    quota: int,
    denoising: Denoising,
) -> torch.Tensor:
    """Indices (into the masked slots, in position order) to unmask this step."""
    code = STRATEGY_CODES.get(denoising.strategy)
    if code is None:
        raise ValueError(f"unknown remasking_strategy {denoising.strategy!r}")
    n = confidence.shape[0]
    device = confidence.device
    chosen = _select_rows(
        confidence.float(),
        None if entropy is None else entropy.float(),
        torch.arange(n, device=device),
        torch.tensor([[denoising.threshold, denoising.eb_threshold]], device=device),
        torch.tensor([[min(quota, n), code]], dtype=torch.long, device=device),
        frozenset({code}),
        n,
    )
    return torch.nonzero(chosen).flatten()


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
    Returns a new tensor; `denoise_batch` applies the same rules in place.
    """
    out = masked_logits.clone()
    out[:, mask_id] = float("-inf")
    if rules is not None and rules.min_tokens > 0 and rules.stop_ids:
        early = torch.nonzero(output_positions.cpu() < rules.min_tokens).flatten()
        stops = torch.tensor(rules.stop_ids, dtype=torch.long)
        out[early[:, None].to(out.device), stops[None, :].to(out.device)] = float("-inf")
    return out


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

    def logprob_arrays(
        self, block: int
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray] | None:
        """(slots, ids, values, ranks) of the decided slots, the block's own
        width; None when the block has no masked slot or asked for none."""
        b = self.pack.blocks[block]
        if b.num_logprobs is None or not self.pack.masked[block]:
            return None
        rows, _ = self.decided(block)
        k = self.pack.vocab if b.num_logprobs < 0 else min(b.num_logprobs, self.pack.vocab)
        lp = np.asarray(rows, dtype=np.int64) + self.pack.lp_first[block]
        slots = [self.pack.masked[block][j] for j in rows]
        return (
            slots,
            self.lp_ids[lp, : k + 1],
            self.lp_values[lp, : k + 1],
            self.lp_ranks[lp],
        )

    def slot_logprobs(self, block: int) -> SlotLogprobs | None:
        arrays = self.logprob_arrays(block)
        if arrays is None:
            return None
        slots, ids, values, ranks = arrays
        return SlotLogprobs(
            slots, torch.from_numpy(ids), torch.from_numpy(values), torch.from_numpy(ranks)
        )


# Rows per proposal chunk on the CPU path: one block's worth. A chunk's
# vocabulary-wide temporaries (4 x 151,936 x 4 bytes ~ 2.4 MB) stay in cache
# and in reused heap memory; a whole batch's would be fresh pages every step
# (glibc maps blocks over 32 MB anew), which made a batched CPU step slower
# than the per-request loop it replaces.
CPU_ROW_CHUNK = 4

Proposal = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]


def _concat_proposals(
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
    does: there proposals run over chunks of `CPU_ROW_CHUNK` rows (the
    vocabulary-wide temporaries of a whole batch would be fresh pages every
    step), and top-p nuclei are searched among the first candidates with a
    host read per round instead of a full sort. Results are the same.
    """
    if logits.shape[0] != pack.num_rows:
        raise ValueError(f"{pack.num_rows} masked rows but logits for {logits.shape[0]}")
    device = logits.device
    if cpu_path is None:
        cpu_path = device.type == "cpu"
    empty = np.zeros((0, pack.max_logprobs + 1))
    if pack.num_rows == 0:
        none = np.zeros(0, dtype=np.int64)
        return StepResult(pack, none, none.astype(bool), empty.astype(np.int64), empty, none)
    row_float = pack.row_float.to(device, non_blocking=True)
    row_int = pack.row_int.to(device, non_blocking=True)
    request_float = pack.request_float.to(device, non_blocking=True)
    request_int = pack.request_int.to(device, non_blocking=True)
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
    # MASK and (below min_tokens) stop ids first: no transform may revive them.
    work[:, pack.mask_id] = float("-inf")
    if pack.forbid.shape[1]:
        forbid = pack.forbid.to(device, non_blocking=True)
        work.index_put_((forbid[0], forbid[1]), torch.tensor(float("-inf"), device=device))
    if pack.rule_blocks is not None:
        # `work` is this step's own tensor (a copy, or the runner's logits).
        work = apply_logit_rules(work, pack.rule_blocks, inplace=True)
    sampled_only = pack.any_sampled and not pack.any_greedy
    rows = _Rows(
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
    with_entropy = _ENTROPY in pack.strategies
    if cpu_path and pack.num_rows > CPU_ROW_CHUNK:
        x0, confidence, entropy, drawn_from = _concat_proposals(
            [
                _propose_rows(
                    work[start : start + CPU_ROW_CHUNK],
                    rows.rows(start, start + CPU_ROW_CHUNK),
                    generator,
                    with_entropy,
                    sync_free=False,
                )
                for start in range(0, pack.num_rows, CPU_ROW_CHUNK)
            ]
        )
    else:
        x0, confidence, entropy, drawn_from = _propose_rows(
            work, rows, generator, with_entropy, sync_free=not cpu_path
        )
    chosen = _select_rows(
        confidence,
        entropy,
        row_int[:, 0],
        request_float,
        request_int,
        pack.strategies,
        pack.width,
    )
    parts = [x0.double(), chosen.double()]
    k = pack.max_logprobs
    if lp_rows is not None:
        if raw is not None:
            values = raw
        else:
            if isinstance(drawn_from, list):
                drawn_from = torch.cat(drawn_from)
            values = drawn_from.index_select(0, lp_rows)
        ids, vals, ranks = gather_logprobs(
            values, x0.index_select(0, lp_rows), k, logprobs_mode.endswith("logprobs")
        )
        # Columns past a block's own width are vLLM's padding (id 0, -inf).
        pad = torch.arange(k + 1, device=device)[None, :] >= pack.logprob_width.to(device)[:, None]
        ids = ids.masked_fill(pad, 0)
        vals = vals.float().masked_fill(pad, float("-inf"))
        parts += [ranks.double(), ids.double().flatten(), vals.double().flatten()]
    host = _to_host(torch.cat(parts))
    m = pack.num_rows
    x0_host = host[:m].astype(np.int64)
    chosen_host = host[m : 2 * m] > 0
    if lp_rows is None:
        none = np.zeros(0, dtype=np.int64)
        return StepResult(pack, x0_host, chosen_host, empty.astype(np.int64), empty, none)
    n = pack.logprob_rows.shape[0]
    ranks_host = host[2 * m : 2 * m + n].astype(np.int64)
    flat = host[2 * m + n :]
    ids_host = flat[: n * (k + 1)].reshape(n, k + 1).astype(np.int64)
    vals_host = flat[n * (k + 1) :].reshape(n, k + 1).astype(np.float32)
    return StepResult(pack, x0_host, chosen_host, ids_host, vals_host, ranks_host)


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
    )
    pack = pack_step([block], [masked_logits.shape[0]], mask_id, masked_logits.shape[-1])
    if pack.num_rows == 0:
        return tokens, None
    gen = generator if isinstance(generator, torch.Generator) else None
    result = denoise_batch(masked_logits, pack, gen, logprobs_mode)
    out = torch.tensor(result.tokens(0), dtype=tokens.dtype)
    return out, result.slot_logprobs(0)


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

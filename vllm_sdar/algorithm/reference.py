"""The reference SDAR decoder: the oracle every other path is checked against.

Follows `shared/spec/sdar-decoding.md` literally, one request at a time,
with transformers' DynamicCache: prefill the prompt's whole blocks, denoise
each block with forwards that are not stored (the cache is cropped back),
then one more forward to store the final block (the "commit"). One rule
beyond the release code: a request ends as soon as the decided prefix of
its open block holds a stop token or reaches max_tokens (the early finish,
which the engine applies too), instead of finishing that block first; the
tokens are the same, only forwards are saved.

Structured outputs (`RequestSettings.structured`) follow `grammar_rule`'s
left-to-right rule with an xgrammar GrammarMatcher compiled the way vLLM's
xgrammar backend compiles it (same tokenizer info, options and stop ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, DynamicCache, GenerationConfig

from vllm_sdar.algorithm.config import (
    register_hf_configs,
    resolve_block_size,
    resolve_mask_id,
    resolve_max_block_steps,
)
from vllm_sdar.algorithm.decoding import (
    RuleContext,
    decided_prefix,
    denoise_step_full,
    first_block,
    step_noise,
    truncate_at_stop,
)
from vllm_sdar.algorithm.grammar_compile import ConstraintCompiler, GrammarSpec
from vllm_sdar.algorithm.grammar_rule import accept_left_to_right
from vllm_sdar.algorithm.hf_model import SDARForCausalLM, model_class_for
from vllm_sdar.algorithm.request_settings import RequestSettings

# One output token's logprobs: (token ids, values, rank of the chosen token),
# ids/values led by the chosen token then the top num_logprobs (vLLM's layout).
TokenLogprobs = tuple[list[int], list[float], int]


@dataclass
class Result:
    token_ids: list[int]
    finish_reason: str
    num_forwards: int  # every model forward this request ran
    num_denoise_forwards: int  # forwards that denoised a block (no prefill/commit)
    logprobs: list[TokenLogprobs] | None = None  # one per token, if asked


class ReferenceDecoder:
    """Loads an SDAR checkpoint (HF format) and decodes with the spec's rules."""

    def __init__(
        self,
        model_dir: str | Path,
        block_size: int | None = None,
        mask_id: int | None = None,
        max_block_steps: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str = "cpu",
        logprobs_mode: str = "raw_logprobs",
    ) -> None:
        self.logprobs_mode = logprobs_mode
        register_hf_configs()
        self.config = AutoConfig.from_pretrained(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.block_size = resolve_block_size(self.config, block_size)
        self.mask_id = resolve_mask_id(self.config, self.tokenizer, mask_id)
        self.max_block_steps = max_block_steps or resolve_max_block_steps(
            self.config, self.block_size
        )
        self.eos_ids = _eos_ids(model_dir, self.config)
        model_cls = model_class_for(self.config)
        self.model: SDARForCausalLM = model_cls.from_pretrained(model_dir, dtype=dtype)
        self.model.to(device).eval()
        self.device = device
        self._grammar_compiler: Any = None

    def grammar_matcher(self, spec: GrammarSpec, stop_ids: Iterable[int]) -> Any:
        """An xgrammar GrammarMatcher for `spec`, built as vLLM's xgrammar
        backend builds it (grammar_compile.py)."""
        if self._grammar_compiler is None:
            self._grammar_compiler = ConstraintCompiler(self.tokenizer, self.config.vocab_size)
        return self._grammar_compiler.matcher(spec, stop_ids)

    def _grammar_bitmask(self, matcher: Any) -> Any:
        import xgrammar as xgr

        bitmask = xgr.allocate_token_bitmask(1, self.config.vocab_size)
        matcher.fill_next_token_bitmask(bitmask, 0)
        return bitmask[0].numpy().copy()

    def _forward(self, tokens: Sequence[int], start: int, cache: DynamicCache) -> torch.Tensor:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        return self.model(ids, start=start, cache=cache, block_size=self.block_size)[0]

    @torch.inference_mode()
    def generate_one(self, prompt: Sequence[int], request: RequestSettings) -> Result:
        if not prompt:
            raise ValueError("prompt must not be empty")
        B = self.block_size
        decoding = request.block_decoding(B, self.eos_ids)
        sampling, stops = decoding.sampling, decoding.finish_ids
        matcher = (
            self.grammar_matcher(request.structured, decoding.output_rules.stop_ids)
            if request.structured is not None
            else None
        )

        cache = DynamicCache()
        forwards = denoise_forwards = 0
        start, tail = first_block(len(prompt), B)
        if start > 0:
            self._forward(prompt[:start], 0, cache)
            forwards += 1
        block = torch.tensor(list(prompt[start:]) + [self.mask_id] * (B - tail))
        generated: list[int] = []
        logprobs: list[TokenLogprobs] = []
        while True:
            step = 0
            block_logprobs: dict[int, TokenLogprobs] = {}
            # Only the generated slots are open: a prompt tail is context even
            # if it contains the MASK token (e.g. a literal "<|MASK|>" typed
            # by the user).
            while bool((block[tail:] == self.mask_id).any()):
                if step >= self.max_block_steps:  # the plugin's safety net
                    open_now = block.tolist()[tail:]
                    decided = open_now[: decided_prefix(open_now, self.mask_id)]
                    return Result(generated + decided, "error", forwards, denoise_forwards)
                logits = self._forward(block.tolist(), start, cache)
                cache.crop(-B)  # a denoising forward is never stored
                forwards += 1
                denoise_forwards += 1
                gen = None if sampling.greedy else step_noise(decoding.seed, start, step)
                open_slots = block[tail:]
                masked = (open_slots == self.mask_id).to(logits.device)
                context = RuleContext(request.rules, list(generated), list(prompt))
                # A grammar constrains until it has ended (then, under
                # ignore_eos or below min_tokens, the rest is free, as in vLLM).
                constrained = matcher is not None and not matcher.is_terminated()
                before = open_slots.tolist()
                block[tail:], step_logprobs = denoise_step_full(
                    open_slots,
                    logits[tail:][masked],
                    self.mask_id,
                    step,
                    decoding.denoising,
                    sampling,
                    gen,
                    output_rules=decoding.output_rules,
                    first_output_pos=len(generated),
                    context=context,
                    num_logprobs=request.num_logprobs,
                    logprobs_mode=self.logprobs_mode,
                    grammar_mask=self._grammar_bitmask(matcher) if constrained else None,
                )
                if constrained:
                    kept, accepted = accept_left_to_right(
                        before,
                        block[tail:].tolist(),
                        self.mask_id,
                        lambda run: _longest_valid(matcher, run),
                    )
                    block[tail:] = torch.tensor(kept)
                    for token in accepted:  # final tokens only advance the grammar
                        matcher.accept_token(token)
                if step_logprobs is not None:
                    for r, slot in enumerate(step_logprobs.slots):
                        block_logprobs[slot] = (
                            step_logprobs.token_ids[r].tolist(),
                            step_logprobs.logprobs[r].tolist(),
                            int(step_logprobs.ranks[r]),
                        )
                step += 1
                # Early finish: the block's decided prefix is output already,
                # so a stop or max_tokens inside it ends the request now (on
                # the last step of a block the prefix is the whole block).
                open_now = block.tolist()[tail:]
                decided = open_now[: decided_prefix(open_now, self.mask_id)]
                output, reason = truncate_at_stop(generated + decided, stops, request.max_tokens)
                if reason is not None:
                    kept = None
                    if request.num_logprobs is not None:
                        kept = logprobs + [block_logprobs[i] for i in range(len(decided))]
                        kept = kept[: len(output)]
                    return Result(output, reason, forwards, denoise_forwards, kept)
            generated += block.tolist()[tail:]
            logprobs += [block_logprobs[i] for i in sorted(block_logprobs)]
            self._forward(block.tolist(), start, cache)  # commit the final block
            forwards += 1
            start, tail = start + B, 0
            block = torch.full((B,), self.mask_id)

    def generate(
        self,
        prompts: Iterable[Sequence[int]],
        request: RequestSettings | Sequence[RequestSettings],
    ) -> list[Result]:
        prompts = list(prompts)
        requests = (
            [request] * len(prompts) if isinstance(request, RequestSettings) else list(request)
        )
        return [self.generate_one(p, r) for p, r in zip(prompts, requests, strict=True)]


def _longest_valid(matcher: Any, run: list[int]) -> int:
    """Leading tokens of `run` the matcher accepts, up to one that ends the
    grammar; the matcher is left as it was (vLLM's validate_tokens)."""
    n = 0
    for token in run:
        if not matcher.accept_token(token):
            break
        n += 1
        if matcher.is_terminated():
            break
    if n:
        matcher.rollback(n)
    return n


def _eos_ids(model_dir: str | Path, config: AutoConfig) -> set[int]:
    """Stop tokens: generation_config.json's eos ids, else the config's."""
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        eos = getattr(config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

"""One request's decoding settings, built once.

`RequestSettings` holds everything a request asks of SDAR decoding in vLLM
SamplingParams' meanings; `from_params` is the only conversion from a
SamplingParams (the scheduler, the reference decoder's drivers, selfcheck
and the tests all call it). `block_decoding` resolves it against one
deployment (block size, the model's EOS ids) into the constants every block
of the request is denoised with, so the stop-id and seed rules exist once
for the engine and the reference. Reads SamplingParams by attribute: no
vLLM import.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vllm_sdar.algorithm.config import SdarOptions
from vllm_sdar.algorithm.denoising import BlockDecoding, Sampling
from vllm_sdar.algorithm.grammar_spec import GrammarSpec
from vllm_sdar.algorithm.logit_rules import LogitRules
from vllm_sdar.algorithm.output_rules import OutputRules


@dataclass(frozen=True)
class RequestSettings:
    """A request's decoding parameters (vLLM SamplingParams' meanings)."""

    max_tokens: int | None = 16
    sampling: Sampling = field(default_factory=Sampling)
    options: SdarOptions = field(default_factory=SdarOptions)
    seed: int | None = None  # None: one is drawn per request
    stop_token_ids: tuple[int, ...] = ()
    # The EOS ids vLLM resolved for the request (model and generation
    # config); None: not resolved by an engine, the decoder uses the model's.
    eos_ids: tuple[int, ...] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    rules: LogitRules = field(default_factory=LogitRules)
    num_logprobs: int | None = None  # vLLM's `logprobs`
    structured: GrammarSpec | None = None  # vLLM's `structured_outputs`

    @classmethod
    def from_params(
        cls,
        params: Any,
        defaults: SdarOptions | None = None,
        any_whitespace: bool = True,
    ) -> RequestSettings:
        """From a vLLM SamplingParams; SDAR options from its `extra_args`
        over the deployment's `defaults` (ValueError naming a bad one)."""
        stop = tuple(params.stop_token_ids or ())
        # An engine's SamplingParams carries its EOS ids (eos_token_id plus
        # generation-config ids, which vLLM also folds into stop_token_ids
        # unless ignore_eos); a bare one carries none.
        eos = None
        if params.eos_token_id is not None:
            eos = tuple(sorted(set(params.all_stop_token_ids) - set(stop)))
        so = params.structured_outputs
        return cls(
            max_tokens=params.max_tokens,
            sampling=Sampling.from_params(params),
            options=SdarOptions.parse(params.extra_args, defaults),
            seed=params.seed,
            stop_token_ids=stop,
            eos_ids=eos,
            ignore_eos=params.ignore_eos,
            min_tokens=params.min_tokens,
            rules=LogitRules.from_params(params),
            num_logprobs=params.logprobs,
            structured=GrammarSpec.from_params(so, any_whitespace) if so is not None else None,
        )

    def stop_ids(self, model_eos_ids: Iterable[int]) -> frozenset[int]:
        """Every id that may end the output: stop ids and EOS ids (min_tokens
        holds all of them back, EOS also under ignore_eos, as vLLM does)."""
        eos = self.eos_ids if self.eos_ids is not None else model_eos_ids
        return frozenset(self.stop_token_ids) | frozenset(eos)

    def finish_ids(self, model_eos_ids: Iterable[int]) -> frozenset[int]:
        """The ids that end the request (vLLM's check_stop)."""
        if self.ignore_eos:
            return frozenset(self.stop_token_ids)
        return self.stop_ids(model_eos_ids)

    def block_decoding(self, block_size: int, model_eos_ids: Iterable[int] = ()) -> BlockDecoding:
        eos = tuple(model_eos_ids)
        return BlockDecoding(
            denoising=self.options.denoising(block_size),
            sampling=self.sampling,
            # Drawn here, once (not on the workers): unseeded sampling is
            # then identical on every tensor-parallel rank.
            seed=self.seed if self.seed is not None else random.getrandbits(62),
            output_rules=OutputRules(self.min_tokens, tuple(sorted(self.stop_ids(eos)))),
            num_logprobs=self.num_logprobs,
            finish_ids=self.finish_ids(eos),
            max_tokens=self.max_tokens,
        )

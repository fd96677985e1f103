"""SDAR configs and options.

- `SDARConfig` / `SDARMoeConfig`: transformers config classes for
  `model_type` "sdar" / "sdar_moe", registered with AutoConfig so released
  checkpoints load without their `auto_map` remote code.
- `resolve_block_size` / `resolve_mask_id`: the spec's resolution order
  (override > config.json > tokenizer > default).
- `SdarOptions`: per-request SDAR options, parsed and validated once.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, Qwen3Config, Qwen3MoeConfig

from vllm_sdar.algorithm.decoding import STRATEGIES, Denoising

DEFAULT_BLOCK_SIZE = 4
DEFAULT_MASK_ID = 151669
DEFAULT_STRATEGY = "low_confidence_dynamic"
DEFAULT_THRESHOLD = 0.85
DEFAULT_EB_THRESHOLD = 0.35
# "prefix": stream each token once it is final (the open block's decided
# prefix); "block": hold a block's tokens until the whole block is final.
STREAM_GRANULARITIES = ("prefix", "block")

ARCHITECTURES = {
    "SDARForCausalLM": "sdar",
    "SDARMoeForCausalLM": "sdar_moe",
}


class _SdarFields:
    """Fields SDAR adds to its Qwen3 base config."""

    def _init_sdar(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.block_size = kwargs.pop("block_size", None)
        self.mask_token_id = kwargs.pop("mask_token_id", None)
        # Released configs ask for flex_attention, which the reference does
        # not need; the block-causal mask is passed explicitly instead.
        kwargs.pop("attn_implementation", None)
        return kwargs


class SDARConfig(_SdarFields, Qwen3Config):
    model_type = "sdar"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._init_sdar(kwargs))


class SDARMoeConfig(_SdarFields, Qwen3MoeConfig):
    model_type = "sdar_moe"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._init_sdar(kwargs))


def register_hf_configs() -> None:
    """Make AutoConfig know both model types (idempotent)."""
    for config_cls in (SDARConfig, SDARMoeConfig):
        with contextlib.suppress(ValueError):  # already registered here
            AutoConfig.register(config_cls.model_type, config_cls)


def _tokenizer_mask_id(tokenizer: Any) -> int | None:
    if tokenizer is None:
        return None
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        mask_id = tokenizer.convert_tokens_to_ids("<|MASK|>")
        if mask_id == getattr(tokenizer, "unk_token_id", None):
            return None
    return int(mask_id) if mask_id is not None else None


_BLOCK_SUFFIX = re.compile(r"-b(\d+)/?$")


def block_size_from_name(model: str) -> int | None:
    """Block size implied by a `-b<N>` model name or directory, if any (the
    -b8/-b16/-b64 releases' Hub configs may not say it)."""
    match = _BLOCK_SUFFIX.search(str(model).rstrip("/"))
    return int(match.group(1)) if match else None


def resolve_block_size(config: Any, override: int | None = None) -> int:
    block = override if override is not None else getattr(config, "block_size", None)
    block = int(block) if block is not None else DEFAULT_BLOCK_SIZE
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    return block


def resolve_mask_id(config: Any, tokenizer: Any = None, override: int | None = None) -> int:
    for candidate in (
        override,
        getattr(config, "mask_token_id", None),
        _tokenizer_mask_id(tokenizer),
    ):
        if candidate is not None:
            return int(candidate)
    return DEFAULT_MASK_ID


def resolve_max_block_steps(config: Any, block_size: int) -> int:
    """Denoising forwards one block may take before its request is ended.

    A safety net: MASK is never proposed and every step unmasks at least one
    slot, so a block needs at most `block_size` steps. Settable with
    `--hf-overrides '{"max_block_steps": N}'` (diagnostics only).
    """
    limit = getattr(config, "max_block_steps", None)
    limit = int(limit) if limit is not None else block_size
    if limit < 1:
        raise ValueError(f"max_block_steps must be >= 1, got {limit}")
    return limit


def resolve_steps_per_iteration(config: Any, max_block_steps: int) -> int:
    """Denoising forwards one engine iteration may run (deployment option).

    `--hf-overrides '{"steps_per_iteration": k}'`: 1 (the default) is one
    step of every running block per engine iteration; k > 1 repeats forward
    and unmasking up to k times inside one `execute_model`; "block" runs
    until every scheduled block is final (at most `max_block_steps`).
    """
    value = getattr(config, "steps_per_iteration", None)
    if value is None:
        return 1
    if value == "block":
        return max_block_steps
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f'steps_per_iteration must be a positive integer or "block", got {value!r}'
        )
    return min(value, max_block_steps)


@dataclass(frozen=True)
class SdarOptions:
    """Per-request SDAR options (SamplingParams.extra_args / extra_body)."""

    denoising_steps: int | None = None  # None = block size
    remasking_strategy: str = DEFAULT_STRATEGY
    confidence_threshold: float = DEFAULT_THRESHOLD
    eb_threshold: float = DEFAULT_EB_THRESHOLD
    stream_granularity: str = STREAM_GRANULARITIES[0]

    KEYS = (
        "denoising_steps",
        "remasking_strategy",
        "confidence_threshold",
        "eb_threshold",
        "stream_granularity",
    )

    @classmethod
    def parse(
        cls, extra: Mapping[str, Any] | None, defaults: SdarOptions | None = None
    ) -> SdarOptions:
        """Validate options; raise ValueError naming the bad parameter."""
        base = defaults or cls()
        values = {k: getattr(base, k) for k in cls.KEYS}
        for key in cls.KEYS:
            if extra and extra.get(key) is not None:
                values[key] = extra[key]
        steps = values["denoising_steps"]
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ValueError(f"denoising_steps must be a positive integer, got {steps!r}")
        strategy = values["remasking_strategy"]
        if strategy not in STRATEGIES:
            raise ValueError(
                f"remasking_strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}"
            )
        if values["stream_granularity"] not in STREAM_GRANULARITIES:
            raise ValueError(
                f"stream_granularity must be one of {', '.join(STREAM_GRANULARITIES)}; "
                f"got {values['stream_granularity']!r}"
            )
        for key in ("confidence_threshold", "eb_threshold"):
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number, got {value!r}")
            values[key] = float(value)
        if not 0.0 < values["confidence_threshold"] <= 1.0:
            raise ValueError(
                f"confidence_threshold must be in (0, 1], got {values['confidence_threshold']}"
            )
        if not values["eb_threshold"] > 0.0:  # also refuses NaN
            raise ValueError(f"eb_threshold must be > 0, got {values['eb_threshold']}")
        return cls(**values)

    def denoising(self, block_size: int) -> Denoising:
        steps = self.denoising_steps if self.denoising_steps is not None else block_size
        if steps > block_size:
            raise ValueError(f"denoising_steps must be <= block size {block_size}, got {steps}")
        return Denoising(
            block_size=block_size,
            steps=steps,
            strategy=self.remasking_strategy,
            threshold=self.confidence_threshold,
            eb_threshold=self.eb_threshold,
        )


@dataclass(frozen=True)
class SdarDeployment:
    """What one served SDAR model fixes for all its requests."""

    block_size: int
    mask_id: int
    defaults: SdarOptions
    max_block_steps: int
    steps_per_iteration: int = 1

    @classmethod
    def from_hf_config(cls, hf_config: Any, tokenizer: Any = None) -> SdarDeployment:
        """Block size, mask id and option defaults; defaults come from config
        attributes of the same names (settable with `--hf-overrides`)."""
        deployment_defaults = {k: getattr(hf_config, k, None) for k in SdarOptions.KEYS}
        block_size = resolve_block_size(hf_config)
        max_block_steps = resolve_max_block_steps(hf_config, block_size)
        deployment = cls(
            block_size=block_size,
            mask_id=resolve_mask_id(hf_config, tokenizer),
            defaults=SdarOptions.parse(deployment_defaults),
            max_block_steps=max_block_steps,
            steps_per_iteration=resolve_steps_per_iteration(hf_config, max_block_steps),
        )
        deployment.defaults.denoising(deployment.block_size)  # steps <= block size
        return deployment

    def options_for(self, extra_args: Mapping[str, Any] | None) -> SdarOptions:
        options = SdarOptions.parse(extra_args, self.defaults)
        options.denoising(self.block_size)
        return options

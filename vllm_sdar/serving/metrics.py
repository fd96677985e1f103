"""Prometheus counters for SDAR, as a vLLM stat-logger plugin.

The scheduler reports each step's SDAR work in `SchedulerStats.spec_decoding_stats`
(the per-step counter structure vLLM already ships from the engine core to the
front end): `num_drafts` = denoising forwards (one per request per step),
`num_draft_tokens` = open slots predicted, `num_accepted_tokens` = tokens
committed (final). This logger exports them on `/metrics`:

- `vllm:sdar_denoising_forwards_total`
- `vllm:sdar_committed_tokens_total`
- `vllm:sdar_predicted_slots_total`

tokens per forward = committed_tokens / denoising_forwards.

The same numbers in SDAR's own terms, beside vLLM's speculative-decoding
framing (whose "mean acceptance length" is 1 + tokens per forward):

- logs: every stats interval, one "SDAR metrics: ..." line
  (`SdarStatLogger.log`) next to vLLM's "SpecDecoding metrics" line;
- responses: `metrics.speculative_decoding.sdar` of a completion/chat
  response (`install_response_terms`); offline, `sdar_terms(completion)`.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import REGISTRY, Counter
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import RequestSpecDecodeMetrics

from vllm_sdar.algorithm.config import ARCHITECTURES

# Under vLLM's "vllm" logger so lines reach vLLM's handler and level (a
# plain module logger has no handler and INFO would be dropped).
logger = logging.getLogger("vllm." + __name__)

COUNTERS = {
    "vllm:sdar_denoising_forwards": ("num_drafts", "SDAR denoising forwards (per request)."),
    "vllm:sdar_committed_tokens": ("num_accepted_tokens", "Tokens made final by SDAR."),
    "vllm:sdar_predicted_slots": ("num_draft_tokens", "Masked slots SDAR predicted."),
}


def terms(denoising_forwards: int, committed_tokens: int, predicted_slots: int) -> dict[str, Any]:
    """SDAR's names for one request's (or one interval's) counts."""
    return {
        "denoising_forwards": int(denoising_forwards),
        "committed_tokens": int(committed_tokens),
        "tokens_per_forward": committed_tokens / denoising_forwards if denoising_forwards else 0.0,
        "predicted_slots": int(predicted_slots),
    }


def request_terms(metrics: RequestSpecDecodeMetrics) -> dict[str, Any]:
    """From the per-request structure the scheduler fills (patches/README.md,
    8): histogram[k] = denoising forwards that unmasked k slots."""
    histogram = metrics.histogram
    return terms(
        sum(histogram),
        sum(k * n for k, n in enumerate(histogram)),
        metrics.num_draft_tokens,
    )


def sdar_terms(completion: Any) -> dict[str, Any] | None:
    """Offline: SDAR terms of a `CompletionOutput` (None without metrics)."""
    metrics = getattr(completion, "spec_decode_metrics", None)
    return None if metrics is None else request_terms(metrics)


def install_response_terms() -> None:
    """Add an `sdar` entry to the per-request metrics of responses.

    vLLM's servers build `metrics.speculative_decoding` from
    `RequestSpecDecodeMetrics.to_dict()`; the wrap adds SDAR's terms there
    when this process serves an SDAR model (the config hook ran here), so
    other models' responses are unchanged. (patches/README.md, 14)
    """
    original = RequestSpecDecodeMetrics.to_dict
    if getattr(original, "_sdar_terms", False):
        return

    def to_dict(self: RequestSpecDecodeMetrics) -> dict[str, Any]:
        from vllm_sdar.serving.validation import current_deployment

        result = original(self)
        if current_deployment() is not None:
            result["sdar"] = request_terms(self)
        return result

    to_dict._sdar_terms = True  # type: ignore[attr-defined]
    RequestSpecDecodeMetrics.to_dict = to_dict


def _counter(name: str, doc: str) -> Counter:
    # vLLM's Prometheus logger unregisters every "vllm:" collector when it is
    # created, so counters are made on first use and reused if still there.
    existing = REGISTRY._names_to_collectors.get(name + "_total")
    if existing is not None:
        return existing
    return Counter(name, doc, labelnames=["model_name", "engine"])


class SdarStatLogger(StatLoggerBase):
    def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
        model_config = vllm_config.model_config
        self.enabled = model_config.architecture in ARCHITECTURES
        self.labels = (str(model_config.served_model_name), str(engine_index))
        self.interval = dict.fromkeys(("num_drafts", "num_accepted_tokens", "num_draft_tokens"), 0)

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        stats = getattr(scheduler_stats, "spec_decoding_stats", None)
        if not self.enabled or stats is None:
            return
        for name, (field, doc) in COUNTERS.items():
            _counter(name, doc).labels(*self.labels).inc(getattr(stats, field))
        for field in self.interval:
            self.interval[field] += getattr(stats, field)

    def log(self) -> None:
        """One line per stats interval, in SDAR's terms (vLLM's own
        "SpecDecoding metrics" line carries the same counts)."""
        if not self.enabled or not self.interval["num_drafts"]:
            return
        t = terms(
            self.interval["num_drafts"],
            self.interval["num_accepted_tokens"],
            self.interval["num_draft_tokens"],
        )
        logger.info(
            "SDAR metrics: denoising forwards: %d, committed tokens: %d, "
            "tokens per forward: %.2f, masked slots predicted: %d",
            t["denoising_forwards"],
            t["committed_tokens"],
            t["tokens_per_forward"],
            t["predicted_slots"],
        )
        self.interval = dict.fromkeys(self.interval, 0)

    def log_engine_initialized(self) -> None:
        pass

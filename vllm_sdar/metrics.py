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
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter
from vllm.v1.metrics.loggers import StatLoggerBase

from vllm_sdar.config import ARCHITECTURES

COUNTERS = {
    "vllm:sdar_denoising_forwards": ("num_drafts", "SDAR denoising forwards (per request)."),
    "vllm:sdar_committed_tokens": ("num_accepted_tokens", "Tokens made final by SDAR."),
    "vllm:sdar_predicted_slots": ("num_draft_tokens", "Masked slots SDAR predicted."),
}


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

    def log_engine_initialized(self) -> None:
        pass

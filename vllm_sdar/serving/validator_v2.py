"""The request validator in Model Runner V2's logits-processor interface."""

from __future__ import annotations

from typing import Any

import torch
from vllm.sampling_params import SamplingParams
from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor

from vllm_sdar.serving.validation import current_deployment, validate_request


class SdarRequestValidatorV2(LogitsProcessor):
    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        validate_request(sampling_params, current_deployment())

    def add_request(self, req_idx: int, sampling_params: SamplingParams) -> bool:
        return False  # never changes logits

    def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        return logits

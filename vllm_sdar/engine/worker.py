"""Workers that run the SDAR model runner (CPU and GPU).

All SDAR logic lives in the runner: Ray's compiled graphs call
`worker.model_runner.execute_model` / `sample_tokens` directly, bypassing
the worker.
"""

from __future__ import annotations

import torch
from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from vllm_sdar.engine.runner import SdarCPUModelRunner, SdarGPUModelRunner


class SdarCPUWorker(CPUWorker):
    def init_device(self) -> None:
        # CPUWorker builds its runner at the end of init_device with no hook
        # to choose the class; replace it before anything else holds it.
        super().init_device()
        self.model_runner = SdarCPUModelRunner(self.vllm_config, torch.device("cpu"))


class SdarGPUWorker(Worker):
    def _make_model_runner(self) -> SdarGPUModelRunner:
        return SdarGPUModelRunner(self.vllm_config, self.device)

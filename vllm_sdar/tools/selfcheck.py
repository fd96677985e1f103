"""`vllm-sdar selfcheck`: is this machine's vLLM serving SDAR exactly?

Builds tiny random-weight SDAR checkpoints (dense and MoE), serves them with
`LLM(...)` at block sizes 4 and 8 (and tensor parallel 2 when two or more
GPUs are present), decodes a mixed batch with every remasking strategy
(greedy, plus one seeded sampled request each) and compares every output
token, finish reason and denoising-forward count with the reference decoder
(which ends a request as soon as its block's decided prefix holds a stop or
max_tokens, as the engine does), then streams the same batch step by step
and checks that the chunks add up to the same tokens.
Prints a PASS/FAIL table and the vLLM version, platform and attention
backend it ran on; exits non-zero on any FAIL. This is what a GPU user runs
first: `vllm-sdar selfcheck` or `python -m vllm_sdar.tools.selfcheck`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGIES: dict[str, dict[str, Any]] = {
    "low_confidence_static": {},
    # Random tiny models are unconfident: thresholds low enough that some
    # steps unmask several slots.
    "low_confidence_dynamic": {"confidence_threshold": 0.25},
    "sequential": {},
    "entropy_bounded": {"eb_threshold": 7.0},
}


@dataclass
class Row:
    arch: str
    block_size: int
    tp: int
    strategy: str
    requests: int
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def _prompts(block: int) -> list[list[int]]:
    import random

    lengths = [1, block - 1, block, block + 1, 3 * block + 2]
    return [
        [random.Random(n * 100 + i).randrange(100, 150000) for _ in range(n)]
        for i, n in enumerate(lengths)
    ]


def _attention_backend(worker: Any) -> str:
    # Runs on each worker (collective_rpc): the backend vLLM actually chose.
    return worker.model_runner.attn_groups[0][0].backend.get_name()


def _check_engine(model: Path, arch: str, block: int, tp: int, log: Any) -> tuple[list[Row], str]:
    from vllm import LLM, SamplingParams

    from vllm_sdar.algorithm.reference import ReferenceDecoder
    from vllm_sdar.algorithm.request_settings import RequestSettings
    from vllm_sdar.tools.llm_shutdown import shutdown_llm
    from vllm_sdar.tools.stream_steps import stream_steps

    ref = ReferenceDecoder(model, block_size=block)
    llm = LLM(
        model=str(model),
        dtype="float32",
        enforce_eager=True,
        gpu_memory_utilization=0.3,
        max_model_len=256,
        seed=0,
        tensor_parallel_size=tp,
        hf_overrides={"block_size": block},
    )
    try:
        backend = str(llm.collective_rpc(_attention_backend)[0])
        prompts = _prompts(block)
        rows = []
        for strategy, extra in STRATEGIES.items():
            options = {"remasking_strategy": strategy, **extra}
            params = [
                SamplingParams(
                    temperature=0.0 if i % 3 else 0.8,
                    top_p=1.0 if i % 3 else 0.9,
                    seed=None if i % 3 else 7 + i,
                    max_tokens=2 * block + 1,
                    ignore_eos=True,
                    extra_args={**options, "denoising_steps": block if i % 2 else block // 2},
                )
                for i in range(len(prompts))
            ]
            outs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
            streams = stream_steps(llm, prompts, params)
            failures = []
            for prompt, p, out, stream in zip(prompts, params, outs, streams, strict=True):
                got = out.outputs[0]
                want = ref.generate_one(
                    prompt,
                    RequestSettings.from_params(p),
                )
                forwards = sum(got.spec_decode_metrics.histogram)
                if (list(got.token_ids), got.finish_reason, forwards) != (
                    want.token_ids,
                    want.finish_reason,
                    want.num_denoise_forwards,
                ):
                    failures.append(
                        f"prompt len {len(prompt)}: vLLM {list(got.token_ids)} "
                        f"({forwards} forwards) != reference {want.token_ids} "
                        f"({want.num_denoise_forwards})"
                    )
                if stream.token_ids != list(got.token_ids):
                    failures.append(
                        f"prompt len {len(prompt)}: streamed {stream.chunks} != "
                        f"{list(got.token_ids)}"
                    )
            rows.append(Row(arch, block, tp, strategy, len(prompts), failures))
            print(f"  {arch} B={block} TP={tp} {strategy}: {'PASS' if not failures else 'FAIL'}",
                  file=log, flush=True)  # fmt: skip
        return rows, backend
    finally:
        shutdown_llm(llm)


def render(rows: list[Row], header: dict[str, str]) -> str:
    lines = [f"{k}: {v}" for k, v in header.items()]
    lines += ["", "| model | B | TP | strategy | requests | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.arch} | {r.block_size} | {r.tp} | {r.strategy} | {r.requests} | "
            f"{'PASS' if r.ok else 'FAIL'} |"
        )
    for r in rows:
        lines += [f"FAIL {r.arch} B={r.block_size} TP={r.tp} {r.strategy}: {f}" for f in r.failures]
    passed = sum(r.ok for r in rows)
    lines.append(f"\n{passed}/{len(rows)} PASS" + ("" if passed == len(rows) else " -- FAILED"))
    return "\n".join(lines)


def _device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vllm-sdar selfcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=None, help="where to build checkpoints")
    parser.add_argument("--no-tp", action="store_true", help="skip tensor parallel 2")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # In-process engine core: starts faster, nothing else changes.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # Keep the table readable: vLLM's info logs go to stdout.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

    import vllm
    from vllm.platforms import current_platform

    from vllm_sdar.tools.tiny import TinySpec, build

    start = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="vllm-sdar-selfcheck-"))
    models = {
        "dense": build(work / "dense", TinySpec(arch="dense", block_size=4)),
        "moe": build(work / "moe", TinySpec(arch="moe", block_size=4, seed=2)),
    }
    devices = _device_count()
    plan = [(arch, block, 1) for arch in models for block in (4, 8)]
    if devices >= 2 and not args.no_tp:
        plan += [("dense", 4, 2), ("moe", 8, 2)]
    rows: list[Row] = []
    backends: set[str] = set()
    for arch, block, tp in plan:
        print(f"selfcheck: {arch} B={block} TP={tp} ...", file=sys.stderr, flush=True)
        try:
            got, backend = _check_engine(models[arch], arch, block, tp, sys.stderr)
            rows += got
            backends.add(backend)
        except Exception as err:  # one engine failing must not hide the others
            rows += [
                Row(arch, block, tp, s, 0, [f"{type(err).__name__}: {err}"]) for s in STRATEGIES
            ]
    header = {
        "vllm-sdar selfcheck": f"vLLM {vllm.__version__}",
        "platform": f"{current_platform.device_name} ({current_platform.device_type}), "
        f"{devices} GPU(s)",
        "attention backend": ", ".join(sorted(backends)) or "unknown (no engine started)",
        "tensor parallel 2": "run"
        if any(r.tp == 2 for r in rows)
        else "not run (fewer than 2 GPUs)",
        "time": f"{time.monotonic() - start:.0f} s",
    }
    print(render(rows, header))
    return 0 if rows and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

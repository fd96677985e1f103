"""Phase "serving": `vllm-sdar serve` + vLLM's own `vllm-sdar bench serve` client.

    python -m benchmarks.serving --mode full --out frag.json

The server runs as a user runs it (API server + engine-core process). For
each request rate the SDAR counters on /metrics are read before and after
the client run, so each rate gets its own denoising forwards and committed
tokens (TPF = committed / forwards).

Streaming note: SDAR emits a block's tokens when the block is final, so a
stream carries one chunk per block; vLLM's ITL is then the time between
blocks, not between tokens (TPOT spreads it per token).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import env
from benchmarks.config import suite
from benchmarks.models import checkpoint
from vllm_sdar.tools.server_process import cli, metric_totals, serve, server_env

SERVED_NAME = "bench-sdar"
COUNTERS = ("vllm:sdar_denoising_forwards_total", "vllm:sdar_committed_tokens_total")
# Fields copied from vLLM's bench result JSON.
RESULT_KEYS = re.compile(r"(ttft|tpot|itl|e2el)_ms$|throughput|^duration$|^completed$|^total_")


def read_counters(base: str) -> dict[str, float]:
    """Each SDAR counter, summed over its label sets (model, engine)."""
    return metric_totals(base, COUNTERS)


def run(mode: str) -> dict[str, Any]:
    plan = suite(mode).serving
    if plan is None:
        return {"skipped": "no serving plan in this mode"}
    path = checkpoint(plan.model)
    work = Path(tempfile.mkdtemp(prefix="sdar-bench-serve-"))
    max_len = math.ceil((plan.input_len * 2 + plan.output_len + 2 * plan.block_size) / 128) * 128
    args = [
        str(path),
        "--served-model-name", SERVED_NAME,
        "--dtype", "float32",
        "--max-model-len", str(max_len),
        "--gpu-memory-utilization", "0.5",
        "--enforce-eager",
        "--max-num-seqs", str(max(plan.num_prompts, 8)),
        "--max-num-batched-tokens", "8192",
        "--hf-overrides", json.dumps({"block_size": plan.block_size}),
    ]  # fmt: skip
    env.log(f"serving: starting serve {path} (B={plan.block_size})")
    began = time.perf_counter()
    out: dict[str, Any] = {
        "model": plan.model.name,
        "block_size": plan.block_size,
        "method": plan.method.name,
        "sdar_options": plan.method.sdar_options(),
        "num_prompts": plan.num_prompts,
        "input_len": plan.input_len,
        "output_len": plan.output_len,
        "rates": [],
    }
    with serve(args, work, timeout=900) as base:
        out["startup_s"] = round(time.perf_counter() - began, 1)
        for rate in plan.rates:
            env.log(f"serving: request rate {rate} ({plan.num_prompts} prompts)")
            before = read_counters(base)
            result_file = f"rate-{rate}.json"
            client = [
                cli(), "bench", "serve",
                "--backend", "openai",
                "--base-url", base,
                "--endpoint", "/v1/completions",
                "--model", SERVED_NAME,
                "--tokenizer", str(path),
                "--dataset-name", "random",
                "--random-input-len", str(plan.input_len),
                "--random-output-len", str(plan.output_len),
                "--ignore-eos",
                "--temperature", "0",
                "--extra-body", json.dumps(plan.method.sdar_options()),
                "--num-prompts", str(plan.num_prompts),
                "--request-rate", str(rate),
                "--seed", "0",
                "--percentile-metrics", "ttft,tpot,itl,e2el",
                "--metric-percentiles", "50,90,99",
                "--save-result",
                "--result-dir", str(work),
                "--result-filename", result_file,
                "--disable-tqdm",
            ]  # fmt: skip
            done = subprocess.run(
                client, cwd=work, env=server_env(), capture_output=True, text=True, timeout=1800
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"bench serve failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
                )
            after = read_counters(base)
            result = json.loads((work / result_file).read_text())
            forwards = after[COUNTERS[0]] - before[COUNTERS[0]]
            committed = after[COUNTERS[1]] - before[COUNTERS[1]]
            row = {k: v for k, v in result.items() if RESULT_KEYS.search(k) and _is_number(v)}
            row.update(
                request_rate=rate if math.isfinite(rate) else "inf",
                sdar_denoising_forwards=forwards,
                sdar_committed_tokens=committed,
                tpf=round(committed / forwards, 4) if forwards else None,
                loadavg=env.loadavg(),
            )
            env.log(
                f"  output {row.get('output_throughput', 0):.1f} tok/s, "
                f"TTFT mean {row.get('mean_ttft_ms', 0):.0f} ms, TPF {row['tpf']}"
            )
            out["rates"].append(row)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["quick", "full"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    env.configure()
    args.out.write_text(json.dumps(run(args.mode), indent=2))


if __name__ == "__main__":
    main()

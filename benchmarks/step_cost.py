"""Where an engine step's time goes: SDAR vs AR, and SDAR before/after a change.

    python -m benchmarks.step_cost                   # addition pair b1/8/64, 0.6B shape b1/8/64
    python -m benchmarks.step_cost --before REV      # also the plugin as it was at REV
    python -m benchmarks.step_cost --case qwen3-0.6b-shape:64   # one case of the full run
    python -m benchmarks.step_cost --quick           # smoke: sdar-addition, b2, 1 round

"ar", "sdar" and "sdar@REV" (from an exported tree), each in a worker, timed
interleaved; every stage (STAGES) of every engine step timed by wrapping the
in-process engine's methods. Stages: benchmarks/README.md.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tarfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

from benchmarks.harness import engines, env
from benchmarks.harness.results import interleave, ratio, report, study
from benchmarks.harness.workers import pool

STAGES = ("step", "forward", "logits", "prepare", "sample", "schedule", "update", "host")
STATIC = "low_confidence_static"


@dataclass(frozen=True)
class Case:
    model: str  # a shipped SDAR asset or a harness.engines.MODELS name
    batch: int
    max_tokens: int
    rounds: int
    strategy: str = "low_confidence_dynamic"  # a random-weight model: STATIC (fixed steps)
    # With --before: the old code too (three 0.75B fp32 engines do not fit in 23 GB
    # beside other work).
    with_before: bool = True


FULL = [
    Case("sdar-addition", 1, 32, 15),
    Case("sdar-addition", 8, 32, 10),
    Case("sdar-addition", 64, 32, 6),
    Case("qwen3-0.6b-shape", 1, 8, 4, STATIC, with_before=False),
    Case("qwen3-0.6b-shape", 8, 8, 3, STATIC, with_before=False),
    Case("qwen3-0.6b-shape", 64, 8, 2, STATIC, with_before=False),  # ~10 s per step
]
QUICK = [Case("sdar-addition", 2, 8, 1)]


def export_tree(rev: str, dest: Path) -> Path:
    """The plugin package at `rev` beside today's benchmarks: a worker whose
    cwd (first on sys.path) it is runs the old `vllm_sdar` (and vLLM's entry
    point `vllm_sdar:register`) under today's harness."""
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "vllm_sdar"], cwd=engines.REPO,
                             capture_output=True)  # fmt: skip
    if archive.returncode:
        raise ValueError(f"--before {rev}: {archive.stderr.decode().strip()}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    subprocess.run(["cp", "-r", str(engines.REPO / "benchmarks"), str(dest)], check=True)
    return dest


class StageTimedEngine(engines.EngineWorker):
    """One engine in a worker process; `measure(prompts, max_tokens)` times one batch."""

    def __init__(self, model: str, kind: str, strategy: str) -> None:
        super().__init__(Path(model), kind)
        import vllm_sdar

        self.info |= {"vllm_sdar": str(Path(vllm_sdar.__file__).parent)}
        self.options = {"remasking_strategy": strategy} if kind == "sdar" else None
        self.totals: dict[str, float] = defaultdict(float)
        core, runner = engines.engine_core(self.llm), engines.runner_of(self.llm)
        sched, model = core.scheduler, runner.model
        for obj, method, stage in (
            (sched, "schedule", "schedule"), (sched, "update_from_output", "update"),
            (runner, "execute_model", "execute"), (runner, "sample_tokens", "sample"),
            (model, "forward", "forward"), (model, "compute_logits", "logits"),
            (self.llm.llm_engine, "step", "step"),
        ):  # fmt: skip
            setattr(obj, method, self._timed(getattr(obj, method), stage))  # shadows the method

    def _timed(self, original: Any, stage: str) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[stage] += time.perf_counter() - began

        return timed

    def measure(self, prompts: list[list[int]], max_tokens: int) -> dict[str, Any]:
        params = engines.sampling_params(max_tokens, self.options)
        self.totals.clear()
        engine, steps = self.llm.llm_engine, 0
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


def run_case(case: Case, before: dict[str, Path], tmp: Path) -> dict[str, Any]:
    model = engines.model_dir(case.model)
    trees = {"ar": engines.REPO, "sdar": engines.REPO}
    trees |= {f"sdar@{rev}": tree for rev, tree in before.items()} if case.with_before else {}
    kwargs = {label: dict(model=str(model), kind=label.split("@")[0], strategy=case.strategy)
              for label in trees}  # fmt: skip
    call = dict(prompts=engines.problem_prompts(model, case.batch), max_tokens=case.max_tokens)
    factory = "benchmarks.step_cost:StageTimedEngine"
    with pool(factory, kwargs, tmp / f"{case.model}-{case.batch}", trees) as workers:
        runs = interleave({k: partial(w.measure, **call) for k, w in workers.items()},
                          case.rounds, warmup=True)  # fmt: skip
        code = {label: w.info["vllm_sdar"] for label, w in workers.items()}
    cells = {
        label: {
            "steps": rs[0]["steps"],
            "ms_per_step": {s: statistics.median(r["ms_per_step"][s] for r in rs) for s in STAGES},
            "wall_ms": statistics.median(r["wall_ms"] for r in rs),
            "code": code[label],
        }
        for label, rs in runs.items()
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
    return report("Engine step cost by stage (ms per engine step, medians)", results, header, rows)


def body(args: Any, tmp: Path) -> dict[str, Any]:
    cases = QUICK if args.quick else FULL
    if args.case:
        names = [f"{c.model}:{c.batch}" for c in FULL]
        cases = [c for c, n in zip(FULL, names) if n in args.case]
        if len(cases) != len(args.case):
            raise SystemExit(f"--case must name cases of the full run: {names}")
    before = {rev: export_tree(rev, tmp / f"tree-{rev}") for rev in args.before}
    return {"study": "step_cost", "before": args.before,
            "cases": [run_case(case, before, tmp) for case in cases]}  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    def options(cli: Any) -> None:
        cli.add_argument("--before", action="append", default=[], help="git revision (repeatable)")
        text = "MODEL:BATCH of the full run (repeatable; its own results file)"
        cli.add_argument("--case", action="append", default=[], help=text)

    def name(args: Any) -> str:  # a partial run gets its own file
        return "step-cost" + "".join(f"-{c.replace(':', '-b')}" for c in args.case)

    quick = "sdar-addition, batch 2, 1 round (smoke)"
    return study(__doc__, name, quick, body, markdown, argv, options)


if __name__ == "__main__":
    main()

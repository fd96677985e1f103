"""The plugin against the reference decoder and AR, side by side in one run.

    python -m benchmarks.reference_speed            # both trained pairs, 64 problems each
    python -m benchmarks.reference_speed --quick    # smoke: addition, 4 problems, 1 round

DECODERS each in a worker, timed interleaved on the held-out problems, one
request at a time (and the vLLM engines all at once); greedy, dynamic 0.9.
The plugin's tokens must equal the reference's (checked every round).
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.engines import ASSETS, EngineWorker, problem_prompts, sampling_params
from benchmarks.harness.results import interleave, ratio, report, study
from benchmarks.harness.workers import pool

OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}
DECODERS = ("reference", "sdar", "ar")


class Decoder(EngineWorker):
    """One decoder in a worker process; `measure()` decodes every problem once."""

    def __init__(self, kind: str, task: str, problems: int) -> None:
        from vllm_sdar.convert.toy import trained_task

        sdar_dir = ASSETS / f"sdar-{task}"
        self.prompts = problem_prompts(sdar_dir, problems)
        self.max_tokens, self.kind = trained_task(sdar_dir).max_tokens, kind
        if kind == "reference":
            import torch

            from vllm_sdar.algorithm.config import SdarOptions
            from vllm_sdar.algorithm.reference import ReferenceDecoder
            from vllm_sdar.algorithm.request_settings import RequestSettings

            torch.set_num_threads(env.threads())
            self.ref = ReferenceDecoder(sdar_dir)
            options = SdarOptions.parse(OPTIONS)
            self.request = RequestSettings(max_tokens=self.max_tokens, options=options)
            self.info = {"decoder": "ReferenceDecoder", "model": str(sdar_dir)}
            return
        super().__init__(ASSETS / f"{kind}-{task}", kind)
        self.info["model"] = str(ASSETS / f"{kind}-{task}")
        options = OPTIONS if kind == "sdar" else None
        self.params = sampling_params(self.max_tokens, options, ignore_eos=False)

    def measure(self, batch: int = 1) -> dict[str, Any]:
        began = time.perf_counter()
        if self.kind == "reference":
            tokens = [self.ref.generate_one(p, self.request).token_ids for p in self.prompts]
        else:
            tokens = []
            for i in range(0, len(self.prompts), batch):
                inputs = [{"prompt_token_ids": p} for p in self.prompts[i : i + batch]]
                outs = self.llm.generate(inputs, self.params, use_tqdm=False)
                tokens += [list(o.outputs[0].token_ids) for o in outs]
        return {"wall_s": time.perf_counter() - began, "tokens": tokens}


def run_pair(task: str, problems: int, rounds: int, tmp: Path) -> dict[str, Any]:
    kwargs = {kind: dict(kind=kind, task=task, problems=problems) for kind in DECODERS}
    with pool("benchmarks.reference_speed:Decoder", kwargs, tmp / task) as workers:
        calls = {k: partial(w.measure, batch=1) for k, w in workers.items()}
        calls |= {f"{k}-all": partial(workers[k].measure, batch=problems) for k in ("sdar", "ar")}
        runs = interleave(calls, rounds, warmup=True)
    for r_sdar, r_ref in zip(runs["sdar"] + runs["sdar-all"], runs["reference"] * 2, strict=True):
        for i, (a, b) in enumerate(zip(r_sdar["tokens"], r_ref["tokens"], strict=True)):
            if a != b:
                raise AssertionError(f"{task}: plugin != reference on problem {i}")
    cells = {}
    for kind, per_round in runs.items():
        tokens = sum(len(t) for t in per_round[0]["tokens"])
        wall = statistics.median(r["wall_s"] for r in per_round)
        cells[kind] = {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}
    env.log(f"{task}: " + ", ".join(f"{k} {c['tok_s']:.1f} tok/s" for k, c in cells.items()))
    return {"task": task, "problems": problems, "rounds": rounds, "cells": cells,
            "plugin_equals_reference": True, "load": env.loadavg()}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for pair in results["pairs"]:
        c = {k: v["tok_s"] for k, v in pair["cells"].items()}
        rows.append(
            [pair["task"], pair["problems"], c["reference"], c["sdar"], c["ar"],
             ratio(c["sdar"], c["reference"]), ratio(c["sdar"], c["ar"]), c["sdar-all"],
             c["ar-all"], ratio(c["sdar-all"], c["reference"]), ratio(c["sdar-all"], c["ar-all"]),
             "yes" if pair["plugin_equals_reference"] else "no"]
        )  # fmt: skip
    header = [
        "pair", "problems", "reference tok/s", "plugin tok/s", "AR parent tok/s",
        "plugin / reference", "plugin / AR", "plugin tok/s, all at once", "AR tok/s, all at once",
        "plugin all / reference", "plugin all / AR all", "plugin tokens = reference",
    ]  # fmt: skip
    return report("Plugin vs reference decoder vs AR (greedy, dynamic 0.9)", results, header, rows)


def body(args: Any, tmp: Path) -> dict[str, Any]:
    tasks, problems, rounds = (("addition",), 4, 1) if args.quick else (("addition", "sort"), 64, 3)
    pairs = [run_pair(t, problems, rounds, tmp) for t in tasks]
    return {"study": "reference_speed", "options": OPTIONS, "pairs": pairs}


def main(argv: list[str] | None = None) -> Path:
    quick = "addition, 4 problems, 1 round (smoke)"
    return study(__doc__, "reference-speed", quick, body, markdown, argv)


if __name__ == "__main__":
    main()

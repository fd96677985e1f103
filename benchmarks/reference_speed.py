"""The plugin against the reference decoder and AR, side by side in one run.

    python -m benchmarks.reference_speed            # both trained pairs, 64 problems each
    python -m benchmarks.reference_speed --quick    # smoke: addition, 4 problems, 1 round

Per trained pair, three decoders of the same held-out problems, each in a
worker process of its own, timed interleaved round by round: one request
at a time for all three (the reference decodes one request at a time, so
batch 1 is where the three are comparable), and the two vLLM engines also
with every problem submitted together (what serving many users gives):
- "reference": `vllm_sdar.algorithm.reference.ReferenceDecoder` on the SDAR
  toy (transformers layers, the spec's decoding loop, a prefill and a
  commit forward per block);
- "sdar": the plugin serving the same checkpoint through vLLM;
- "ar": stock vLLM on the AR parent the toy was converted from.
Greedy, `low_confidence_dynamic` 0.9, stopping at EOS. The plugin's tokens
must equal the reference's for every problem (checked every round; the
run fails otherwise), so the SDAR / reference ratio compares the same
work. Reported: tokens/s per decoder (median over rounds) and the ratios.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, ratio
from benchmarks.harness.workers import Worker

ASSETS = Path(__file__).resolve().parent.parent / "vllm_sdar" / "assets"
FACTORY = "benchmarks.reference_speed:Decoder"
OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}
DECODERS = ("reference", "sdar", "ar")


class Decoder:
    """One decoder in a worker process; `measure()` decodes every problem once."""

    def __init__(self, kind: str, task: str, problems: int) -> None:
        import torch
        from transformers import AutoTokenizer

        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.toy import held_out, trained_task

        torch.set_num_threads(env.threads())
        sdar_dir, ar_dir = ASSETS / f"sdar-{task}", ASSETS / f"ar-{task}"
        tok = AutoTokenizer.from_pretrained(sdar_dir)
        self.prompts = [prompt_ids(tok, p) for p in held_out(problems, sdar_dir)]
        self.max_tokens = trained_task(sdar_dir).max_tokens
        self.kind = kind
        if kind == "reference":
            from vllm_sdar.algorithm.config import SdarOptions
            from vllm_sdar.algorithm.reference import ReferenceDecoder, Request

            self.ref = ReferenceDecoder(sdar_dir)
            self.request = Request(max_tokens=self.max_tokens, options=SdarOptions.parse(OPTIONS))
            self.info = {"decoder": "ReferenceDecoder", "model": str(sdar_dir)}
            return
        from benchmarks.harness.engines import EngineSpec, sampling_params, start_verified

        model = sdar_dir if kind == "sdar" else ar_dir
        spec = EngineSpec(kind, max_model_len=256)
        self.llm, info = start_verified(model, spec, "Qwen3ForCausalLM")
        self.params = sampling_params(
            self.max_tokens, OPTIONS if kind == "sdar" else None, ignore_eos=False
        )
        self.info = info | {"model": str(model)}

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
        wall = time.perf_counter() - began
        return {"wall_s": wall, "tokens": tokens}

    def close(self) -> None:
        if self.kind != "reference":
            from benchmarks.harness.engines import shutdown

            shutdown(self.llm)


def run_pair(task: str, problems: int, rounds: int, tmp: Path) -> dict[str, Any]:
    proc_env = {**os.environ, **env.preload_env(False), "VLLM_CPU_KVCACHE_SPACE": "1"}
    workers: dict[str, Worker] = {}
    try:
        for kind in DECODERS:
            env.log(f"loading {task} ({kind})")
            kwargs = dict(kind=kind, task=task, problems=problems)
            workers[kind] = Worker(FACTORY, kwargs, proc_env, tmp / f"{task}-{kind}", kind)
        calls = {k: partial(w.measure, batch=1) for k, w in workers.items()}
        calls |= {f"{k}-all": partial(workers[k].measure, batch=problems) for k in ("sdar", "ar")}
        runs = interleave(calls, rounds, warmup=True)
    finally:
        for w in workers.values():
            w.close()
    for r_sdar, r_ref in zip(runs["sdar"] + runs["sdar-all"], runs["reference"] * 2, strict=True):
        if r_sdar["tokens"] != r_ref["tokens"]:
            bad = next(
                i for i, (a, b) in enumerate(zip(r_sdar["tokens"], r_ref["tokens"])) if a != b
            )
            raise AssertionError(f"{task}: plugin != reference on problem {bad}")
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
        c = pair["cells"]
        rows.append(
            [pair["task"], pair["problems"], c["reference"]["tok_s"], c["sdar"]["tok_s"],
             c["ar"]["tok_s"], ratio(c["sdar"]["tok_s"], c["reference"]["tok_s"]),
             ratio(c["sdar"]["tok_s"], c["ar"]["tok_s"]), c["sdar-all"]["tok_s"],
             c["ar-all"]["tok_s"], ratio(c["sdar-all"]["tok_s"], c["reference"]["tok_s"]),
             ratio(c["sdar-all"]["tok_s"], c["ar-all"]["tok_s"]),
             "yes" if pair["plugin_equals_reference"] else "no"]
        )  # fmt: skip
    header = [
        "pair", "problems", "reference tok/s", "plugin tok/s", "AR parent tok/s",
        "plugin / reference", "plugin / AR", "plugin tok/s, all at once",
        "AR tok/s, all at once", "plugin all / reference", "plugin all / AR all",
        "plugin tokens = reference",
    ]  # fmt: skip
    machine = results["machine"]
    return (
        f"# Plugin vs reference decoder vs AR ({machine['cpu']}, {machine['cores']} "
        f"cores, {results['threads']} thread per decoder; greedy, dynamic 0.9)\n\n"
        + md_table(header, rows, digits=2)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, quick="addition, 4 problems, 1 round (smoke)")
    args = p.parse_args(argv)
    env.configure()
    tasks, problems, rounds = (("addition",), 4, 1) if args.quick else (("addition", "sort"), 64, 3)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdar-bench-ref-") as tmp:
        pairs = [run_pair(t, problems, rounds, Path(tmp)) for t in tasks]
    results = {
        "study": "reference_speed",
        "machine": env.describe(),
        "threads": env.threads(),
        "options": OPTIONS,
        "pairs": pairs,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    publish(results, args.out, stem("reference-speed", args.quick), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

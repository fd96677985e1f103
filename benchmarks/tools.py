"""The tool-calling pair: right calls and answers, tokens per forward, speed
against its AR parent, and the second turn's prefix-cache hits (issue 30).

    python -m benchmarks.tools            # 200 held-out problems, 3 rounds
    python -m benchmarks.tools --quick    # smoke: 8 problems, 1 round

Two engines over the same held-out problems, each in a worker process of
its own, timed interleaved round by round: "sdar" (the plugin serving
`sdar-tools`) and "ar" (stock vLLM serving `ar-tools`, the Qwen3 it was
converted from). Prompts are the chat template's renders with the
request's tools, as the server renders them (turn 1: the problem; turn 2:
the problem, the model's call and the tool's result). Greedy, SDAR
`low_confidence_dynamic` 0.9, stopping at EOS. Reported, side by side:

- calls right (turn 1: the hermes text names the right tool with the right
  numbers) and answers right (turn 2: the tool's result), per engine;
- SDAR tokens per forward, unconstrained and constrained (the call under
  the xgrammar structural tag hermes' `tool_choice="auto"` builds: free
  text until `<tool_call>`, then the name and the arguments' schema);
- tokens/s of both engines under that constraint (vLLM's own structured
  outputs for the AR parent), one request at a time and all at once;
- the second turn's prefix-cache hit rate: turn-2 prompts sent after their
  turn-1 prompts, `num_cached_tokens / prompt tokens` (KV pages of 16
  tokens for both engines, the CPU attention backend's smallest: a turn-1
  conversation shorter than a page leaves nothing to share).
"""

from __future__ import annotations

import json
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
FACTORY = "benchmarks.tools:ToolEngine"
OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}
PAGE = 32  # KV page for both engines: the CPU attention backend's smallest


def hermes_tag(problem: Any) -> str:
    """The structural tag (legacy form) of hermes' tool_choice="auto"."""
    structures = [
        {
            "begin": f'<tool_call>{{"name": "{t["function"]["name"]}", "arguments": ',
            "schema": t["function"]["parameters"],
            "end": "}</tool_call>",
        }
        for t in problem.tools
    ]
    return json.dumps({"structures": structures, "triggers": ["<tool_call>"]})


class ToolEngine:
    """One engine in a worker process."""

    def __init__(self, kind: str, problems: int) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM

        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.toy import held_out

        sdar_dir, ar_dir = ASSETS / "sdar-tools", ASSETS / "ar-tools"
        tok = AutoTokenizer.from_pretrained(sdar_dir)
        self.tokenizer = tok
        self.problems = held_out(problems, sdar_dir)
        self.prompts = [prompt_ids(tok, p) for p in self.problems]
        self.kind = kind
        # The harness's engine settings, with a page size of PAGE.
        kwargs: dict[str, Any] = dict(
            model=str(sdar_dir if kind == "sdar" else ar_dir),
            dtype="float32",
            enforce_eager=True,
            gpu_memory_utilization=0.5,
            max_model_len=256,
            block_size=PAGE,
            enable_prefix_caching=True,
            seed=0,
        )
        self.llm = LLM(**kwargs)
        self.info = {"kind": kind, "model": kwargs["model"], "page": PAGE}

    def _params(self, problem: Any, constrained: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = StructuredOutputsParams(structural_tag=hermes_tag(problem)) if constrained else None
        return SamplingParams(
            max_tokens=40,
            temperature=0,
            extra_args=OPTIONS if self.kind == "sdar" else None,
            structured_outputs=so,
        )

    def measure(
        self, batch: int = 1, constrained: bool = True, prefix_hits: bool = False
    ) -> dict[str, Any]:
        if prefix_hits:
            return self._prefix_hits()
        began = time.perf_counter()
        outs = []
        for i in range(0, len(self.prompts), batch):
            inputs = [{"prompt_token_ids": p} for p in self.prompts[i : i + batch]]
            params = [self._params(p, constrained) for p in self.problems[i : i + batch]]
            outs += self.llm.generate(inputs, params, use_tqdm=False)
        wall = time.perf_counter() - began
        right = [o.outputs[0].text == p.answer for o, p in zip(outs, self.problems, strict=True)]
        tokens = [len(o.outputs[0].token_ids) for o in outs]
        forwards = [
            sum(o.outputs[0].spec_decode_metrics.histogram)
            if o.outputs[0].spec_decode_metrics is not None
            else len(o.outputs[0].token_ids)
            for o in outs
        ]
        return {
            "wall_s": wall,
            "tokens": sum(tokens),
            "forwards": sum(forwards),
            "right": {
                str(t): [r for r, p in zip(right, self.problems) if p.turn == t] for t in (1, 2)
            },
        }

    def _prefix_hits(self) -> dict[str, Any]:
        """Turn-2 prompts right after their turn-1 prompts: cached share."""
        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.tools import Problem

        self.llm.reset_prefix_cache()
        cached = total = 0
        for p in self.problems:
            first = Problem(p.a, p.b, p.op, p.tool_names, 1)
            second = Problem(p.a, p.b, p.op, p.tool_names, 2)
            self.llm.generate([{"prompt_token_ids": prompt_ids(self.tokenizer, first)}],
                              self._params(first, True), use_tqdm=False)  # fmt: skip
            ids = prompt_ids(self.tokenizer, second)
            (out,) = self.llm.generate([{"prompt_token_ids": ids}],
                                       self._params(second, True), use_tqdm=False)  # fmt: skip
            cached += out.num_cached_tokens or 0
            total += len(ids)
        return {"cached_tokens": cached, "prompt_tokens": total, "hit_rate": cached / total}

    def close(self) -> None:
        from benchmarks.harness.engines import shutdown

        shutdown(self.llm)


def run(problems: int, rounds: int, tmp: Path) -> dict[str, Any]:
    proc_env = {**os.environ, **env.preload_env(False), "VLLM_CPU_KVCACHE_SPACE": "1"}
    workers: dict[str, Worker] = {}
    try:
        for kind in ("sdar", "ar"):
            env.log(f"loading tools ({kind})")
            workers[kind] = Worker(FACTORY, dict(kind=kind, problems=problems), proc_env,
                                   tmp / kind, kind)  # fmt: skip
        calls = {k: partial(w.measure, batch=1) for k, w in workers.items()}
        calls |= {f"{k}-all": partial(w.measure, batch=problems) for k, w in workers.items()}
        calls["sdar-free"] = partial(workers["sdar"].measure, batch=problems, constrained=False)
        runs = interleave(calls, rounds, warmup=True)
        hits = {k: w.measure(prefix_hits=True) for k, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    cells = {}
    for name, per_round in runs.items():
        first = per_round[0]
        wall = statistics.median(r["wall_s"] for r in per_round)
        cells[name] = {
            "tokens": first["tokens"],
            "forwards": first["forwards"],
            "tpf": first["tokens"] / first["forwards"],
            "tok_s": first["tokens"] / wall,
            "calls_right": sum(first["right"]["1"]) / max(1, len(first["right"]["1"])),
            "answers_right": sum(first["right"]["2"]) / max(1, len(first["right"]["2"])),
            "turn_counts": [len(first["right"]["1"]), len(first["right"]["2"])],
        }
    return {"problems": problems, "rounds": rounds, "cells": cells, "prefix_hits": hits,
            "load": env.loadavg()}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    c, hits = results["cells"], results["prefix_hits"]
    n1, n2 = c["sdar"]["turn_counts"]
    rows = [
        ["SDAR (sdar-tools)", c["sdar"]["calls_right"], c["sdar"]["answers_right"],
         c["sdar-free"]["tpf"], c["sdar"]["tpf"], c["sdar"]["tok_s"], c["sdar-all"]["tok_s"],
         hits["sdar"]["hit_rate"]],
        ["AR parent (ar-tools)", c["ar"]["calls_right"], c["ar"]["answers_right"], 1.0, 1.0,
         c["ar"]["tok_s"], c["ar-all"]["tok_s"], hits["ar"]["hit_rate"]],
        ["SDAR / AR", "", "", "", "", ratio(c["sdar"]["tok_s"], c["ar"]["tok_s"]),
         ratio(c["sdar-all"]["tok_s"], c["ar-all"]["tok_s"]), ""],
    ]  # fmt: skip
    header = [
        "engine", f"calls right ({n1})", f"answers right ({n2})", "TPF unconstrained",
        "TPF constrained", "tok/s b=1 (constrained)", f"tok/s all {results['problems']}",
        "turn-2 prefix-cache hits",
    ]  # fmt: skip
    machine = results["machine"]
    return (
        f"# Tool calling: sdar-tools vs its AR parent ({machine['cpu']}, {machine['cores']} "
        f"cores; greedy, SDAR dynamic 0.9, B = 4; held-out problems; KV pages of {PAGE})\n\n"
        + md_table(header, rows, digits=3)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, quick="8 problems, 1 round (smoke)")
    args = p.parse_args(argv)
    env.configure()
    problems, rounds = (8, 1) if args.quick else (200, 3)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sdar-bench-tools-") as tmp:
        results = run(problems, rounds, Path(tmp))
    results |= {
        "study": "tools",
        "machine": env.describe(),
        "threads": env.threads(),
        "options": OPTIONS,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    publish(results, args.out, stem("tools", args.quick), markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

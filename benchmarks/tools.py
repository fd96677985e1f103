"""The tool-calling pair: right calls and answers, tokens per forward, speed
against its AR parent, and the second turn's prefix-cache hits (issue 30).

    python -m benchmarks.tools            # 200 held-out problems, 3 rounds
    python -m benchmarks.tools --quick    # smoke: 8 problems, 1 round

`sdar-tools` (the plugin) and `ar-tools` (stock vLLM), each in a worker,
timed interleaved; greedy, SDAR dynamic 0.9, calls constrained by the
structural tag hermes' `tool_choice="auto"` builds. benchmarks/README.md.
"""

from __future__ import annotations

import json
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.engines import ASSETS, EngineWorker, new_llm
from benchmarks.harness.results import interleave, md_table, ratio, study
from benchmarks.harness.workers import pool

OPTIONS = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}
PAGE = 32  # KV page for both engines: the CPU attention backend's smallest


def hermes_tag(problem: Any) -> str:
    """The structural tag (legacy form) of hermes' tool_choice="auto"."""
    structures = [{"begin": f'<tool_call>{{"name": "{t["function"]["name"]}", "arguments": ',
                   "schema": t["function"]["parameters"], "end": "}</tool_call>"}
                  for t in problem.tools]  # fmt: skip
    return json.dumps({"structures": structures, "triggers": ["<tool_call>"]})


class ToolEngine(EngineWorker):
    """One engine in a worker process (KV pages of PAGE tokens, prefix caching)."""

    def __init__(self, kind: str, problems: int) -> None:
        from transformers import AutoTokenizer

        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.toy import held_out

        sdar_dir = ASSETS / "sdar-tools"
        self.tokenizer = AutoTokenizer.from_pretrained(sdar_dir)
        self.problems = held_out(problems, sdar_dir)
        self.prompts = [prompt_ids(self.tokenizer, p) for p in self.problems]
        self.kind = kind
        model = str(ASSETS / f"{kind}-tools")
        self.llm = new_llm(model, max_model_len=256, block_size=PAGE, enable_prefix_caching=True)
        self.info = {"kind": kind, "model": model, "page": PAGE}

    def _params(self, problem: Any, constrained: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        so = StructuredOutputsParams(structural_tag=hermes_tag(problem)) if constrained else None
        options = OPTIONS if self.kind == "sdar" else None
        return SamplingParams(max_tokens=40, temperature=0, extra_args=options,
                              structured_outputs=so)  # fmt: skip

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
        metrics = [(o.outputs[0].spec_decode_metrics, o.outputs[0].token_ids) for o in outs]
        forwards = sum(sum(m.histogram) if m is not None else len(ids) for m, ids in metrics)
        return {"wall_s": wall, "tokens": sum(len(ids) for _, ids in metrics), "forwards": forwards,
                "right": {str(t): [r for r, p in zip(right, self.problems) if p.turn == t]
                          for t in (1, 2)}}  # fmt: skip

    def _prefix_hits(self) -> dict[str, Any]:
        """Turn-2 prompts right after their turn-1 prompts: cached share."""
        from vllm_sdar.convert.evaluate import prompt_ids
        from vllm_sdar.convert.tools import Problem

        self.llm.reset_prefix_cache()
        cached = total = 0
        for p in self.problems:
            first, second = (Problem(p.a, p.b, p.op, p.tool_names, t) for t in (1, 2))
            self.llm.generate([{"prompt_token_ids": prompt_ids(self.tokenizer, first)}],
                              self._params(first, True), use_tqdm=False)  # fmt: skip
            ids = prompt_ids(self.tokenizer, second)
            (out,) = self.llm.generate([{"prompt_token_ids": ids}],
                                       self._params(second, True), use_tqdm=False)  # fmt: skip
            cached += out.num_cached_tokens or 0
            total += len(ids)
        return {"cached_tokens": cached, "prompt_tokens": total, "hit_rate": cached / total}


def body(args: Any, tmp: Path) -> dict[str, Any]:
    problems, rounds = (8, 1) if args.quick else (200, 3)
    kwargs = {kind: dict(kind=kind, problems=problems) for kind in ("sdar", "ar")}
    with pool("benchmarks.tools:ToolEngine", kwargs, tmp / "tools") as workers:
        calls = {k: partial(w.measure, batch=1) for k, w in workers.items()}
        calls |= {f"{k}-all": partial(w.measure, batch=problems) for k, w in workers.items()}
        calls["sdar-free"] = partial(workers["sdar"].measure, batch=problems, constrained=False)
        runs = interleave(calls, rounds, warmup=True)
        hits = {k: w.measure(prefix_hits=True) for k, w in workers.items()}
    cells = {}
    for name, per_round in runs.items():
        first, right = per_round[0], per_round[0]["right"]
        wall = statistics.median(r["wall_s"] for r in per_round)
        cells[name] = {
            "tokens": first["tokens"], "forwards": first["forwards"],
            "tpf": first["tokens"] / first["forwards"], "tok_s": first["tokens"] / wall,
            "calls_right": sum(right["1"]) / max(1, len(right["1"])),
            "answers_right": sum(right["2"]) / max(1, len(right["2"])),
            "turn_counts": [len(right["1"]), len(right["2"])],
        }  # fmt: skip
    return {"study": "tools", "options": OPTIONS, "problems": problems, "rounds": rounds,
            "cells": cells, "prefix_hits": hits, "load": env.loadavg()}  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    c, hits, m = results["cells"], results["prefix_hits"], results["machine"]
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
    return (
        f"# Tool calling: sdar-tools vs its AR parent ({m['cpu']}, {m['cores']} cores; greedy, "
        f"SDAR dynamic 0.9, B = 4; held-out problems; KV pages of {PAGE})\n\n"
        + md_table(header, rows, digits=3) + "\n"
    )  # fmt: skip


def main(argv: list[str] | None = None) -> Path:
    return study(__doc__, "tools", "8 problems, 1 round (smoke)", body, markdown, argv)


if __name__ == "__main__":
    main()

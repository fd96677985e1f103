"""Streaming: what a client sees, `stream_granularity` "prefix" (each token
once final) against "block" (one chunk per final block), interleaved batch
by batch on one engine: time to first token, gaps, chunk sizes, last token.

    python -m benchmarks.streaming            # sort toy (B = 4, 16), 0.6B-shaped model
    python -m benchmarks.streaming --quick    # smoke: tiny random model, few requests

(The early-finish half, against the scheduler at 055e651: results/ARCHIVE.md.)
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import engines, env
from benchmarks.harness.results import interleave, md_table, ratio, study

DYNAMIC = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}


@dataclass(frozen=True)
class Case:
    model: str  # "sdar-sort" (trained; B = 16 runs its weights with a larger block) or random
    block_size: int
    batch: int
    requests: int
    max_tokens: int
    rounds: int


FULL = [
    Case("sdar-sort", 4, 1, 16, 40, 3),
    Case("sdar-sort", 16, 1, 16, 40, 3),
    Case("sdar-sort", 4, 8, 32, 40, 3),
    Case("qwen3-0.6b-shape", 4, 1, 2, 32, 2),
    Case("qwen3-0.6b-shape", 16, 1, 2, 32, 2),
]
QUICK = [Case("tiny-dense", 4, 1, 2, 12, 1)]


def _stream_stats(streams: list[Any]) -> dict[str, float]:
    gaps = [b - a for s in streams for a, b in zip(s.chunk_times, s.chunk_times[1:])]
    return {
        "ttft_ms": statistics.median(s.chunk_times[0] for s in streams) * 1000,
        "gap_ms": (statistics.mean(gaps) * 1000) if gaps else float("nan"),
        "chunk_tokens": statistics.mean(len(c) for s in streams for c in s.chunks),
        "last_ms": statistics.median(s.chunk_times[-1] for s in streams) * 1000,
    }


def latency(case: Case) -> dict[str, Any]:
    from vllm_sdar.tools.stream_steps import stream_steps

    model = engines.model_dir(case.model)
    spec = engines.EngineSpec("sdar", case.block_size, max_num_seqs=case.batch)
    llm, engine = engines.start_verified(model, spec)
    trained = (model / "eval.json").exists()  # trained toys stop at EOS as users' requests do
    prompts = engines.problem_prompts(model, case.requests)

    def run(granularity: str) -> Any:
        options = {**DYNAMIC, "stream_granularity": granularity}
        params = engines.sampling_params(case.max_tokens, options, ignore_eos=not trained)
        batches = [prompts[i : i + case.batch] for i in range(0, len(prompts), case.batch)]
        return lambda: [s for b in batches for s in stream_steps(llm, b, [params] * len(b))]

    try:
        got = interleave({g: run(g) for g in ("prefix", "block")}, case.rounds, warmup=True)
    finally:
        engines.shutdown(llm)
    for a, b in zip(got["prefix"], got["block"], strict=True):  # the same text either way
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
    row: dict[str, Any] = {**asdict(case), "trained": trained, "engine": engine}
    for name, runs in got.items():
        per_round = [_stream_stats(r) for r in runs]
        row[name] = {k: statistics.median(p[k] for p in per_round) for k in per_round[0]}
    row["ttft_block_over_prefix"] = ratio(row["block"]["ttft_ms"], row["prefix"]["ttft_ms"])
    ttft = {g: round(row[g]["ttft_ms"]) for g in ("prefix", "block")}
    env.log(f"{case.model} B={case.block_size} batch {case.batch}: TTFT ms {ttft}")
    return row


def render(results: dict[str, Any]) -> str:
    rows = [
        [r["model"] + ("" if r["trained"] else " (random)"), r["block_size"], r["batch"],
         r["prefix"]["ttft_ms"], r["block"]["ttft_ms"], r["ttft_block_over_prefix"],
         *(r[g][k] for k in ("gap_ms", "chunk_tokens", "last_ms") for g in ("prefix", "block"))]
        for r in results["latency"]
    ]  # fmt: skip
    header = ["model", "B", "batch", "TTFT prefix", "TTFT block", "block/prefix", "gap prefix",
              "gap block", "chunk tok prefix", "chunk tok block", "last prefix",
              "last block"]  # fmt: skip
    return (
        f"# Streaming ({results['machine']['cpu']})\n\n"
        "Latency of a stream (medians; ms since the batch was submitted):\n\n"
        + md_table(header, rows, digits=1)
    )


def body(args: Any, tmp: Path) -> dict[str, Any]:
    return {"latency": [latency(c) for c in (QUICK if args.quick else FULL)]}


def main(argv: list[str] | None = None) -> Path:
    return study(__doc__, "streaming", "tiny model, a few requests (smoke)", body, render, argv)


if __name__ == "__main__":
    main()

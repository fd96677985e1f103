"""Streaming and early finish: what a client sees, and the forwards saved.

    python -m benchmarks.streaming            # sort toy (B = 4, 16) + 0.6B-shaped model; both pairs
    python -m benchmarks.streaming --quick    # smoke: tiny random model, few requests

Two measurements, each side by side in one run:

1. **Latency of a stream**, `stream_granularity` "prefix" (send each token
   once final: the open block's decided prefix) against "block" (one chunk
   per final block), interleaved request batch by request batch on the same
   engine (the option is per request): time to first token, mean gap
   between chunks, mean chunk size, time to the last token. On the trained
   sort model (its block size is 4; B = 16 runs the same weights with a
   larger block, labelled) and a Qwen3-0.6B-shaped random-weight model.
2. **Early finish**: the trained pairs' held-out problems through today's
   scheduler and through the scheduler as it was before the early finish
   (git revision `BEFORE`, loaded as `scheduler_cls`), interleaved: the
   same tokens (checked), fewer denoising forwards, more tokens/s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.models import model_dir as bench_model_dir
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, ratio

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "vllm_sdar" / "assets"
# The last commit whose scheduler finished every block before checking stops.
BEFORE = "055e651"
DYNAMIC = {"remasking_strategy": "low_confidence_dynamic", "confidence_threshold": 0.9}


@dataclass(frozen=True)
class LatencyCase:
    model: str  # "sdar-sort" (trained asset) or a benchmarks.shapes_models name
    block_size: int
    batch: int
    requests: int
    max_tokens: int
    rounds: int


FULL_LATENCY = [
    LatencyCase("sdar-sort", 4, 1, 16, 40, 3),
    LatencyCase("sdar-sort", 16, 1, 16, 40, 3),
    LatencyCase("sdar-sort", 4, 8, 32, 40, 3),
    LatencyCase("qwen3-0.6b-shape", 4, 1, 2, 32, 2),
    LatencyCase("qwen3-0.6b-shape", 16, 1, 2, 32, 2),
]
QUICK_LATENCY = [LatencyCase("tiny-dense", 4, 1, 2, 12, 1)]
FULL_PAIRS = {"addition": 128, "sort": 128}
QUICK_PAIRS = {"addition": 8}



def _prompts(name: str, model_dir: Path, n: int) -> list[list[int]]:
    """Held-out problems (chat template) for a trained toy, random ids otherwise."""
    if (model_dir / "eval.json").exists():
        from transformers import AutoTokenizer

        from benchmarks.trained import chat_prompt
        from vllm_sdar.convert.toy import held_out

        tok = AutoTokenizer.from_pretrained(model_dir)
        # As vLLM tokenizes a completion prompt.
        return [tok.encode(chat_prompt(tok, p.prompt)) for p in held_out(n, model_dir)]
    from benchmarks.harness.engines import prompts

    return prompts(n, 32)


def _stream_stats(streams: list[Any]) -> dict[str, float]:
    gaps = [b - a for s in streams for a, b in zip(s.chunk_times, s.chunk_times[1:])]
    return {
        "ttft_ms": statistics.median(s.chunk_times[0] for s in streams) * 1000,
        "gap_ms": (statistics.mean(gaps) * 1000) if gaps else float("nan"),
        "chunk_tokens": statistics.mean(len(c) for s in streams for c in s.chunks),
        "last_ms": statistics.median(s.chunk_times[-1] for s in streams) * 1000,
    }


def latency(case: LatencyCase) -> dict[str, Any]:
    from vllm import SamplingParams

    from benchmarks.harness.engines import EngineSpec, shutdown, start_verified
    from vllm_sdar.tools.stream_steps import stream_steps

    model_dir = bench_model_dir(case.model)
    spec = EngineSpec("sdar", case.block_size, max_model_len=256, max_num_seqs=case.batch)
    llm, engine = start_verified(model_dir, spec, "Qwen3ForCausalLM")
    trained = (model_dir / "eval.json").exists()
    prompts = _prompts(case.model, model_dir, case.requests)
    try:

        def run(granularity: str) -> Any:
            params = SamplingParams(
                temperature=0.0,
                max_tokens=case.max_tokens,
                ignore_eos=not trained,  # trained toys stop at EOS as users' requests do
                extra_args={**DYNAMIC, "stream_granularity": granularity},
            )

            def go() -> list[Any]:
                streams = []
                for i in range(0, len(prompts), case.batch):
                    batch = prompts[i : i + case.batch]
                    streams += stream_steps(llm, batch, [params] * len(batch))
                return streams

            return go

        got = interleave({g: run(g) for g in ("prefix", "block")}, case.rounds, warmup=True)
    finally:
        shutdown(llm)
    prefix, block = got["prefix"], got["block"]
    for a, b in zip(prefix, block, strict=True):  # the same text either way
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
    row: dict[str, Any] = {**case.__dict__, "trained": trained, "engine": engine}
    for name, runs in (("prefix", prefix), ("block", block)):
        per_round = [_stream_stats(r) for r in runs]
        row[name] = {k: statistics.median(p[k] for p in per_round) for k in per_round[0]}
    row["ttft_block_over_prefix"] = ratio(row["block"]["ttft_ms"], row["prefix"]["ttft_ms"])
    env.log(
        f"{case.model} B={case.block_size} batch {case.batch}: TTFT prefix "
        f"{row['prefix']['ttft_ms']:.0f} ms vs block {row['block']['ttft_ms']:.0f} ms"
    )
    return row


def _scheduler_before(workdir: Path) -> str:
    """The SDAR scheduler at `BEFORE`, importable as `sdar_before.scheduler`."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:vllm_sdar/engine/scheduler.py"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    package = workdir / "sdar_before"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "scheduler.py").write_text(source)
    sys.path.insert(0, str(workdir))  # in-process engine (env.configure)
    return "sdar_before.scheduler.SdarScheduler"


def early_finish(task: str, n: int, rounds: int, batch: int = 8) -> dict[str, Any]:
    from vllm import LLM, SamplingParams

    from benchmarks.harness.engines import shutdown, timed_generate

    model_dir = ASSETS / f"sdar-{task}"
    prompts = _prompts(task, model_dir, n)
    params = SamplingParams(temperature=0.0, max_tokens=64, extra_args=DYNAMIC)
    before_cls = _scheduler_before(Path(tempfile.mkdtemp(prefix="sdar-before-")))
    engines = {
        name: LLM(
            model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=256,
            gpu_memory_utilization=0.5, seed=0, max_num_seqs=batch,
            **({"scheduler_cls": before_cls} if name == "before" else {}),
        )
        for name in ("before", "early_finish")
    }  # fmt: skip
    try:

        def run(llm: Any) -> Any:
            def go() -> dict[str, Any]:
                wall, tokens, forwards, ids = 0.0, 0, 0, []
                for i in range(0, len(prompts), batch):
                    r = timed_generate(llm, prompts[i : i + batch], params)
                    wall += r.wall_s
                    tokens += sum(r.output_tokens)
                    forwards += sum(r.denoise_forwards or [])
                    ids += r.texts
                return {"wall_s": wall, "tokens": tokens, "forwards": forwards, "texts": ids}

            return go

        got = interleave({k: run(v) for k, v in engines.items()}, rounds, warmup=True)
    finally:
        for llm in engines.values():
            shutdown(llm)
    row: dict[str, Any] = {"task": task, "problems": n, "batch": batch, "rounds": rounds}
    texts = {k: [r["texts"] for r in runs] for k, runs in got.items()}
    row["same_outputs"] = all(a == b for a, b in zip(texts["before"], texts["early_finish"]))
    for name, runs in got.items():
        row[name] = {
            "forwards_per_request": runs[0]["forwards"] / n,
            "tokens_per_s": statistics.median(r["tokens"] / r["wall_s"] for r in runs),
            "tpf": runs[0]["tokens"] / max(runs[0]["forwards"], 1),
        }
    b, e = row["before"], row["early_finish"]
    row["forwards_saved"] = round(1 - e["forwards_per_request"] / b["forwards_per_request"], 4)
    row["speedup"] = ratio(e["tokens_per_s"], b["tokens_per_s"])
    env.log(f"{task}: forwards -{row['forwards_saved']:.1%}, tok/s x{row['speedup']}")
    return row


def render(results: dict[str, Any]) -> str:
    lat = [
        [
            r["model"] + ("" if r["trained"] else " (random)"),
            r["block_size"], r["batch"],
            r["prefix"]["ttft_ms"], r["block"]["ttft_ms"], r["ttft_block_over_prefix"],
            r["prefix"]["gap_ms"], r["block"]["gap_ms"],
            r["prefix"]["chunk_tokens"], r["block"]["chunk_tokens"],
            r["prefix"]["last_ms"], r["block"]["last_ms"],
        ]
        for r in results["latency"]
    ]  # fmt: skip
    ef = [
        [
            r["task"], r["problems"], r["batch"], r["same_outputs"],
            r["before"]["forwards_per_request"], r["early_finish"]["forwards_per_request"],
            r["forwards_saved"], r["before"]["tokens_per_s"], r["early_finish"]["tokens_per_s"],
            r["speedup"],
        ]
        for r in results["early_finish"]
    ]  # fmt: skip
    return "\n\n".join(
        [
            f"# Streaming and early finish ({results['environment']['cpu']})",
            "Latency of a stream (medians; ms since the batch was submitted):",
            md_table(
                ["model", "B", "batch", "TTFT prefix", "TTFT block", "block/prefix",
                 "gap prefix", "gap block", "chunk tok prefix", "chunk tok block",
                 "last prefix", "last block"],
                lat, digits=1,
            ),  # fmt: skip
            f"Early finish (held-out problems, greedy dynamic 0.9; before = scheduler at "
            f"{BEFORE}):",
            md_table(
                ["pair", "problems", "batch", "same outputs", "forwards/req before",
                 "forwards/req now", "forwards saved", "tok/s before", "tok/s now", "speed-up"],
                ef, digits=3,
            ),  # fmt: skip
        ]
    )


def main(argv: list[str] | None = None) -> Path:
    args = parser(__doc__, quick="tiny model, a few requests (smoke test)").parse_args(argv)
    env.configure()
    cases, pairs, rounds = (
        (QUICK_LATENCY, QUICK_PAIRS, 1) if args.quick else (FULL_LATENCY, FULL_PAIRS, 3)
    )
    results: dict[str, Any] = {"environment": env.describe()}
    results["latency"] = [latency(c) for c in cases]
    results["early_finish"] = [early_finish(t, n, rounds) for t, n in pairs.items()]
    results["environment"]["load_end"] = env.loadavg()
    return publish(results, args.out, stem("streaming", args.quick), render(results))


if __name__ == "__main__":
    main()

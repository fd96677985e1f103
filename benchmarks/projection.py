"""A PROJECTION (not a measurement) of SDAR vs AR tokens/s on H100 and H200.

    python -m benchmarks.projection [--tpf 2.07,3.37] [--shapes <shapes results JSON>]

Writes OUT/<date>-projection.json and .md (a projection: no machine in the
name, nothing was measured on one).

Nothing here ran on a GPU. Step time = the roofline of one forward
(`roofline.forward_cost`: weights read once, KV per request, MoE experts
touched by the step's tokens) on published H100/H200 figures, derated by
stated efficiencies, for the release shapes of SDAR-4B, SDAR-8B and
SDAR-30B-A3B in bf16. SDAR's step averages a block decoded in B / TPF steps:
B query tokens per step plus the commit of the previous block once per block,
(B + TPF) / 2 lm_head rows on average. Engine overhead (scheduling,
unmasking, Python) is not in the roofline; the CPU benchmark
(`benchmarks.shapes`) measures how close the plugin's SDAR/AR step ratio
gets to the roofline's ratio where both are memory-bound (batch 1), and the
table carries that measured ratio next to the projected one.

TPF is the input that decides everything: `--tpf` defaults to what the
trained toys measured through the plugin (B = 4, dynamic 0.9: 2.07 on
addition's short answers, 3.37 on sort's long ones). Published
throughput of other engines is quoted next to it for scale only: different
prompts, lengths and batch compositions.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from benchmarks.harness.results import md_table, parser, publish
from benchmarks.roofline import Shape, forward_cost, limit_s

GPUS = {
    # Published dense bf16 tensor-core peak and HBM bandwidth (SXM parts).
    "H100 SXM": {"bandwidth_gb_s": 3350.0, "bf16_tflops": 989.0},
    "H200": {"bandwidth_gb_s": 4800.0, "bf16_tflops": 989.0},
}
# Assumed fractions of the published peaks that decode kernels reach.
MEMORY_EFFICIENCY = 0.75
COMPUTE_EFFICIENCY = 0.5

RELEASES = {
    "SDAR-4B": Shape(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128,
                     vocab=151936, intermediate=9728),
    "SDAR-8B": Shape(hidden=4096, layers=36, heads=32, kv_heads=8, head_dim=128,
                     vocab=151936, intermediate=12288),
    "SDAR-30B-A3B": Shape(hidden=2048, layers=48, heads=32, kv_heads=4, head_dim=128,
                          vocab=151936, experts=128, experts_per_tok=8, moe_intermediate=768),
}  # fmt: skip
PUBLISHED = [
    "JetEngine, SDAR-4B, batch 128: 3,000+ tok/s on A800, 5,000+ tok/s on H200",
    "SGLang, SDAR-8B on GSM8K, 128 parallel requests: 659 tok/s",
]
CONTEXT = 384  # mean keys per request: a 256-token prompt and a 256-token answer


def step_ms(shape: Shape, gpu: dict[str, float], tokens: int, rows: int, requests: int) -> float:
    machine = {
        "bandwidth_gb_s": gpu["bandwidth_gb_s"] * MEMORY_EFFICIENCY,
        "matmul_gflops": {"bfloat16": gpu["bf16_tflops"] * 1e3 * COMPUTE_EFFICIENCY},
    }
    cost = forward_cost(shape, tokens, rows, requests, CONTEXT, "bfloat16")
    return 1e3 * limit_s(cost, machine, "bfloat16")["limit_s"]


def project(tpf: float, block: int, batches: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    steps_per_block = max(block / tpf, 1.0)
    for gpu_name, gpu in GPUS.items():
        for model, shape in RELEASES.items():
            for n in batches:
                ar = step_ms(shape, gpu, n, n, n)
                tokens = round(n * block * (1 + 1 / steps_per_block))
                sdar = step_ms(shape, gpu, tokens, round(n * (block + tpf) / 2), n)
                rows.append(
                    {
                        "gpu": gpu_name,
                        "model": model,
                        "batch": n,
                        "block_size": block,
                        "tpf": tpf,
                        "ar_step_ms": round(ar, 3),
                        "sdar_step_ms": round(sdar, 3),
                        "step_ratio": round(sdar / ar, 3),
                        "ar_tok_s": round(1e3 * n / ar),
                        "sdar_tok_s": round(1e3 * n * tpf / sdar),
                        "speedup": round(tpf * ar / sdar, 2),
                    }
                )
    return rows


def measured_batch1_ratio(shapes_json: Path | None) -> dict[str, float]:
    """SDAR/AR step ratio measured at batch 1, B = 4 (mean of the two step
    kinds), bf16, per CPU benchmark model: the memory-bound regime."""
    if shapes_json is None or not shapes_json.exists():
        return {}
    results = json.loads(shapes_json.read_text())
    out = {}
    for r in results["rows"]:
        if r.get("preload_compare"):
            continue
        if r["batch"] == 1 and r["block_size"] == 4 and r["dtype"] == "bfloat16":
            out[r["model"]] = r["break_even_tpf"]
    return out


def render(rows: list[dict[str, Any]], measured: dict[str, float]) -> str:
    lines = [
        "**Projection, not a measurement** (nothing ran on a GPU): roofline of one bf16 "
        f"forward at {int(MEMORY_EFFICIENCY * 100)}% of published HBM bandwidth and "
        f"{int(COMPUTE_EFFICIENCY * 100)}% of published bf16 peak, mean context {CONTEXT} "
        "keys per request, engine overhead excluded.",
        "",
    ]
    tpfs = sorted({r["tpf"] for r in rows})
    header = ["GPU", "model", "batch", "B", "AR tok/s"]
    for t in tpfs:
        header += [f"SDAR tok/s (TPF {t:g})", "SDAR/AR"]
    table = []
    order = {name: i for i, name in enumerate([*GPUS, *RELEASES])}
    keys = sorted(
        {(r["gpu"], r["model"], r["batch"]) for r in rows},
        key=lambda k: (order[k[0]], order[k[1]], k[2]),
    )
    for gpu, model, batch in keys:
        cell = {
            r["tpf"]: r for r in rows if (r["gpu"], r["model"], r["batch"]) == (gpu, model, batch)
        }
        first = cell[tpfs[0]]
        line = [gpu, model, batch, first["block_size"], f"{first['ar_tok_s']:,}"]
        for t in tpfs:
            line += [f"{cell[t]['sdar_tok_s']:,}", f"{cell[t]['speedup']}x"]
        table.append(line)
    lines.append(md_table(header, table))
    if measured:
        lines += [
            "",
            "Measured on this CPU in the memory-bound regime (batch 1, B = 4, bf16), "
            "SDAR/AR step ratio (break-even TPF): "
            + ", ".join(f"{m} {v:.2f}" for m, v in sorted(measured.items()))
            + " (the roofline predicts ~1.0 for dense: the weights are read once either way).",
        ]
    lines += ["", "Published figures, for scale (other engines, workloads and prompts):"]
    lines += [f"- {p}" for p in PUBLISHED]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    cli = parser(__doc__)
    cli.add_argument("--tpf", default="2.07,3.37", help="SDAR tokens per forward, comma-separated")
    cli.add_argument("--block-size", type=int, default=4)
    cli.add_argument("--batches", default="1,64,128")
    cli.add_argument("--shapes", type=Path, help="benchmarks.shapes results JSON")
    args = cli.parse_args(argv)
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = [r for t in args.tpf.split(",") for r in project(float(t), args.block_size, batches)]
    measured = measured_batch1_ratio(args.shapes)
    text = render(rows, measured)
    print(text)
    payload = {
        "projection": True,
        "gpus": GPUS,
        "memory_efficiency": MEMORY_EFFICIENCY,
        "compute_efficiency": COMPUTE_EFFICIENCY,
        "context": CONTEXT,
        "rows": rows,
        "measured_batch1_ratio_cpu": measured,
        "published": PUBLISHED,
    }
    return publish(payload, args.out, f"{dt.date.today().isoformat()}-projection", text)


if __name__ == "__main__":
    main()

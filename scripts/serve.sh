#!/usr/bin/env bash
# The main job: serve an SDAR model with vLLM's OpenAI-compatible server.
#   bash scripts/serve.sh                # the project's default small SDAR model
#   bash scripts/serve.sh <dir|hub id|short name> [vllm serve args...]
# Installs what it needs first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# Keeps the KV cache of a big checkpoint inside this CPU's budget; the
# default model's own limit (256 positions) is lower, so it keeps that.
limit=(--max-model-len 1024)
if [ $# -gt 0 ]; then
  model=$1
  shift
  # The package's own models are short-context (256 positions): their limit.
  if .venv/bin/python -c 'import sys; from vllm_sdar.serving.names import PACKAGED
sys.exit(sys.argv[1] not in PACKAGED)' "$model"; then
    limit=()
  fi
else
  model=sdar-addition  # short name of the trained model inside the package
  limit=()
fi
# CPU build defaults that fit these machines (see shared notes: the memory
# check reads NUMA node 0); override by exporting them.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
# tcmalloc + Intel OpenMP, as vLLM's CPU guide advises (gain measured in
# benchmarks/README.md); an LD_PRELOAD already set is kept as it is.
if [ -z "${LD_PRELOAD:-}" ]; then
  LD_PRELOAD=$(.venv/bin/python -m vllm_sdar.tools.cpu_preload)
  export LD_PRELOAD
fi
exec .venv/bin/vllm-sdar serve "$model" --dtype float32 "${limit[@]}" \
  --gpu-memory-utilization 0.5 "$@"

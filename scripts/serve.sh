#!/usr/bin/env bash
# The main job: serve an SDAR model with vLLM's OpenAI-compatible server.
#   bash scripts/serve.sh                # the project's default small SDAR model
#   bash scripts/serve.sh <dir|hub id|short name> [vllm serve args...]
# Installs what it needs first (scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
DEFAULT=vllm_sdar/assets/sdar-addition
model=${1:-$DEFAULT}
[ $# -gt 0 ] && shift
extra=()
if [ "$model" = "$DEFAULT" ]; then
  extra=(--served-model-name sdar-addition)
fi
# CPU build defaults that fit these machines (see shared notes: the memory
# check reads NUMA node 0); override by exporting them.
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
exec .venv/bin/vllm-sdar serve "$model" --dtype float32 --max-model-len 1024 \
  --gpu-memory-utilization 0.5 "${extra[@]}" "$@"

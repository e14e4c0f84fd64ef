#!/usr/bin/env bash
# Set up ./.venv if needed, then run the tests (GPU tests skip themselves without CUDA).
#   bash scripts/test.sh           the default suite (not slow, not heavy: a few minutes on 2 cores)
#   bash scripts/test.sh --full    everything but the heavy zoo sweeps (what CI runs)
#   bash scripts/test.sh -m heavy  the model-zoo sweeps (tens of minutes)
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "--full" ]; then
  shift
  set -- -m "not heavy" "$@"
fi
.venv/bin/python -m pytest "$@"

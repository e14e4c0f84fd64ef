#!/usr/bin/env bash
# Create ./.venv (once) with onnxcam and everything the export stage, the demo and the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision pinned to the releases this project is tested with (a CUDA build that also runs on the CPU).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[export,demo,dev,ray,lime,metrics,kpca]"

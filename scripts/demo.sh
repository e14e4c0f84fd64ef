#!/usr/bin/env bash
# The built-in default job, from a fresh clone: set up ./.venv, export the real pretrained EfficientNet-Lite0 to an
# explainer graph, and explain five real photos into demo-out/ (overlays, method grids, results.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
MODEL=models/efficientnet_lite0.onnx
if [ ! -f "$MODEL" ]; then
  onnxcam export models/efficientnet_lite0.py:build --output "$MODEL"
fi
onnxcam info "$MODEL" | head -n 5
python models/photos.py demo-out/photos
onnxcam explain "$MODEL" demo-out/photos --out demo-out --method gradcam,gradcam++,layercam,eigencam \
  --save overlay,grid "$@"
echo "open demo-out/*.grid.png to compare the methods"

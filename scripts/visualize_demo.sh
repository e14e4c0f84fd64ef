#!/usr/bin/env bash
# docs/feature_visualization.png: activation maximisation on the pretrained EfficientNet-Lite0 (onnxruntime only after
# the export): two ImageNet classes and one channel of the last feature map (_swish#2, exported as the unit layer).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-demo-out/efficientnet_lite0_units.onnx}
OUT=${OUT:-demo-out/vis}
mkdir -p "$OUT"
if [ ! -f "$MODEL" ]; then
  onnxcam export models/efficientnet_lite0.py:build --output "$MODEL" --input-gradient standard --unit-layer "_swish#2"
fi
onnxcam visualize "$MODEL" --target 340 --steps 192 --jitter 8 --blur 1 -o "$OUT/zebra.png"
onnxcam visualize "$MODEL" --target 327 --steps 192 --jitter 8 --blur 1 -o "$OUT/starfish.png"
onnxcam visualize "$MODEL" --target channel:808 --steps 128 --jitter 8 --blur 1 -o "$OUT/channel808.png"
python - "$OUT" <<'PY'
import sys

import cv2
import numpy as np

from onnxcam.visual import with_caption

out = sys.argv[1]
tiles = [
    with_caption(cv2.cvtColor(cv2.imread(f"{out}/{name}.png"), cv2.COLOR_BGR2RGB), caption)
    for name, caption in (("zebra", "class 340 zebra"), ("starfish", "class 327 starfish"),
                          ("channel808", "channel:808 of _swish#2"))
]
gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
grid = np.concatenate([tiles[0], gap, tiles[1], gap, tiles[2]], axis=1)
cv2.imwrite("docs/feature_visualization.png", cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
PY
echo "wrote docs/feature_visualization.png"

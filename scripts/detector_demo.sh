#!/usr/bin/env bash
# docs/detector.png: per-box Grad-CAM of a real pretrained face detector on three real photos. The detector is MTCNN's
# P-Net alone (its first stage, no R-Net/O-Net), run over an image pyramid in one graph (models/mtcnn_pnet.py; weights
# from the facenet-pytorch wheel, installed without its dependencies: it pins old torch releases). onnxruntime only
# after the export.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-demo-out/mtcnn_pnet.onnx}
OUT=${OUT:-demo-out/faces}
if ! python -c "import facenet_pytorch" 2>/dev/null; then
  echo "needs the facenet-pytorch wheel (P-Net's weights): pip install --no-deps 'facenet-pytorch==2.6.0'" >&2
  exit 1
fi
if [ ! -f "$MODEL" ]; then
  onnxcam export models/mtcnn_pnet.py:build --output "$MODEL"
fi
onnxcam info "$MODEL" | grep -E "^(layers|detector)"
python models/photos.py "$OUT/photos" faces
onnxcam detect "$MODEL" "$OUT/photos" -o "$OUT" --confidence 0.995 --nms-iou 0.3
python - "$OUT" <<'PY'
# Top row: each photo's overlay as `onnxcam detect` wrote it; bottom row: each box zoomed (box + 60 % margin).
import json
import sys

import cv2
import numpy as np
from PIL import Image

from onnxcam.visual import with_caption

out, height, network = sys.argv[1], 320, 512  # tile height; the graph's input side (boxes are in its pixels)
tops, zooms = [], []
for line in open(f"{out}/results.jsonl"):
    record = json.loads(line)
    stem = record["input"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
    picture = cv2.cvtColor(cv2.imread(f"{out}/{stem}.detect.gradcam.png"), cv2.COLOR_BGR2RGB)
    h, w = picture.shape[:2]
    width = round(w * height / h)
    tops.append(with_caption(cv2.resize(picture, (width, height), interpolation=cv2.INTER_AREA), stem))
    for box in record["boxes"]:
        x0, y0, x1, y1 = np.array(box["xyxy"]) * [w, h, w, h] / network
        mx, my = 0.6 * (x1 - x0), 0.6 * (y1 - y0)
        crop = picture[max(0, int(y0 - my)) : int(y1 + my), max(0, int(x0 - mx)) : int(x1 + mx)]
        crop = cv2.resize(crop, (width, round(crop.shape[0] * width / crop.shape[1])), interpolation=cv2.INTER_CUBIC)
        zooms.append(with_caption(crop, f"{stem}: {box['label']} {box['score']:.4f} (zoomed)"))


def row(tiles):
    tall = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, tall - t.shape[0]), (0, 6), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(tiles, axis=1)[:, :-6]


top, bottom = row(tops), row(zooms)
grid = np.concatenate([top, np.full((6, top.shape[1], 3), 255, np.uint8), bottom], axis=0)
# 256 colours (octree) keep the picture small; median cut loses the heat map's reds
Image.fromarray(grid).quantize(256, method=Image.Quantize.FASTOCTREE).save("docs/detector.png", optimize=True)
PY
echo "wrote docs/detector.png"

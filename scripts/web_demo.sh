#!/usr/bin/env bash
# The web page on the demo model: export the pretrained EfficientNet-Lite0 with in-graph Grad-CAM (once), serve the
# repository on 127.0.0.1, let headless Chromium pick the model and a real photo (skimage's cat), save the page's
# screenshot to docs/web.png and print class, probability and the median ms of 20 session runs (onnxruntime-web,
# WebAssembly). Needs ./.venv (scripts/setup.sh) and scripts/setup_web.sh. To use the page yourself:
#   python -m http.server -d . 8000   then open http://127.0.0.1:8000/web/index.html
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=models/efficientnet_lite0.gradcam.onnx
if [ ! -f "$MODEL" ]; then
  "$PY" -m onnxcam export models/efficientnet_lite0.py:build --output "$MODEL" --in-graph gradcam,gradcam++,layercam
fi
work=$(mktemp -d)
"$PY" -c "import cv2, sys; from skimage import data; cv2.imwrite(sys.argv[1], data.chelsea()[..., ::-1])" "$work/cat.png"
port=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$PY" -m http.server "$port" --bind 127.0.0.1 --directory . >/dev/null 2>&1 &
server=$!
trap 'kill "$server"; rm -rf "$work"' EXIT
sleep 1
node web/drive.mjs --url "http://127.0.0.1:$port/web/index.html" --model "$MODEL" --image "$work/cat.png" \
  --out "$work/result.json" --screenshot docs/web.png --time 20 --chromium "${CHROMIUM:-$(command -v chromium)}"
"$PY" -c "import json, sys; r = json.load(open(sys.argv[1])); print(r['text'], '|', r['median_ms'], 'ms median')" \
  "$work/result.json"

#!/usr/bin/env bash
# The checks that need a GPU, on a machine with one: the CUDA / TensorRT provider tests and the CUDA throughput
# section of BENCHMARKS.md (onnxruntime-gpu's CUDA provider vs pytorch-grad-cam and torch eager on the same GPU).
#   bash scripts/gpu_check.sh [OUTDIR]
# Needs, importable by `python3` (or $PY): onnxruntime-gpu, torch with CUDA, torchvision, onnx, onnxscript, grad-cam,
# pytest, and this repository's packages (`pip install -e '.[export,dev]'` with onnxruntime-gpu in place of
# onnxruntime). Writes OUTDIR/gpu-tests.log, OUTDIR/BENCHMARKS.md (this repo's file with the CUDA section replaced)
# and OUTDIR/bench.log. Exits non-zero when a test fails; a benchmark that cannot run is logged, not fatal.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=$(realpath -m "${1:-gpu-out}")
mkdir -p "$OUT"
"$PY" - <<'EOF' 2>&1 | tee "$OUT/providers.txt"
import onnxruntime as ort, torch
print("onnxruntime", ort.__version__, ort.get_available_providers())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_providers.py tests/test_any_runtime.py 2>&1 | tee "$OUT/gpu-tests.log"
status=${PIPESTATUS[0]}
cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
"$PY" bench/bench.py --only-cuda --out "$OUT/BENCHMARKS.md" 2>&1 | tee "$OUT/bench.log"
exit "$status"

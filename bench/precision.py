"""Speed of deployed precisions (CPU, batch 8): plain forward and Grad-CAM explainer of float32, float16 and int8 QDQ.

``python bench/precision.py [model …]`` prints a Markdown table (BENCHMARKS.md, "Deployed precision"), with the
load average (1 min) at the start and end of the timing; the contenders take turns call by call, so the ratios hold
on a shared machine while the absolute rates drop with its load. Random-init
torchvision weights, 224×224, int8 = ``quantize_static`` QDQ per-channel calibrated on 8 random images, float16 =
``convert_float_to_float16(keep_io_types=True)``; explainers exported without verification (the tests verify).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from onnxcam_export.api import export_onnx_file
from onnxconverter_common import float16
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from onnxcam.explainer import Explainer

BATCH, RUNS, WARMUP = 8, 7, 2
PRECISIONS = ("float32", "float16", "int8")


class Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.it = iter([{"images": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)} for _ in range(8)])

    def get_next(self) -> dict | None:
        return next(self.it, None)


def interleaved_rates(contenders: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Images/s of each contender: median of :data:`RUNS` timed calls after :data:`WARMUP`, the contenders taking
    turns call by call, so a change of load on the shared machine slows them all alike and their ratios hold."""
    for _ in range(WARMUP):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(RUNS):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: BATCH / statistics.median(t) for name, t in times.items()}


def main(*names: str) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print(
        "| model | precision | ORT forward | explainer graph | onnxcam Grad-CAM | Grad-CAM / own forward "
        "| Grad-CAM / float32 forward | load avg (start–end) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names or ("resnet50",):
        bench(name)


def bench(name: str) -> None:
    """One model's rows: float32, float16 and int8 forward, explainer graph and Grad-CAM rates (images/s)."""
    w = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(weights=None).eval()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 224, 224),),
        str(w / "float32.onnx"),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    onnx.save(
        float16.convert_float_to_float16(onnx.load(str(w / "float32.onnx")), keep_io_types=True),
        str(w / "float16.onnx"),
    )
    quant_pre_process(str(w / "float32.onnx"), str(w / "prep.onnx"))
    quantize_static(
        str(w / "prep.onnx"),
        str(w / "int8.onnx"),
        Calibration(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    x = np.random.default_rng(1).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)
    target = np.full(BATCH, -1, np.int64)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    contenders: dict[str, Callable[[], object]] = {}
    for precision in PRECISIONS:
        path = w / f"{precision}.onnx"
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        export_onnx_file(path, w / f"{precision}.explainer.onnx", verify=False, heads=False, log=lambda _: None)
        explainer = Explainer(w / f"{precision}.explainer.onnx", provider="cpu", threads=2)
        contenders[f"{precision} forward"] = lambda s=session: s.run(None, {"images": x})
        contenders[f"{precision} graph"] = lambda e=explainer: e.run(x, target)
        contenders[f"{precision} cam"] = lambda e=explainer: e.explain_arrays(x, methods=("gradcam",))
    start = os.getloadavg()[0]
    rate = interleaved_rates(contenders)
    load = f"{start:.1f}–{os.getloadavg()[0]:.1f}"
    for precision in PRECISIONS:
        forward, graph, cam = (rate[f"{precision} {k}"] for k in ("forward", "graph", "cam"))
        print(
            f"| {name} | {precision} | {forward:.1f} | {graph:.1f} | {cam:.1f} | {cam / forward:.2f}× "
            f"| {cam / rate['float32 forward']:.2f}× | {load} |",
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])

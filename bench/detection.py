"""Cost of per-box Grad-CAM on a detector vs one plain forward pass (CPU), onnxcam's two designs side by side.

    python bench/detection.py [--size 320] [--runs 5] [--threads 2]

The detector: a random-init ResNet-18 trunk with a two-scale YOLO-style anchor-free head (``[N, 84, A]``, strides
16 and 32), Grad-CAM at ``layer4``. Rows: the explainer graph's plain forward (``Explainer.scores``, gradients off);
``explain_detections`` with ``one_forward=True`` (the box-axis backward: one forward pass per image for all boxes, plus
the forward that finds the boxes) and ``one_forward=False`` (one seeded row per box: the forward repeated per box),
for 1, 10 and 50 boxes, without EigenCAM. Median of ``--runs`` timed runs after one warm-up. Never asserts timings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from onnxcam_export.api import export_model
from torch import nn

from onnxcam.explainer import Explainer


class ResNetYolo(nn.Module):
    """ResNet-18 trunk, anchor-free head at strides 16 and 32: ``[N, 4 + K, A]`` (box in pixels, class σ)."""

    def __init__(self, classes: int = 80) -> None:
        super().__init__()
        r = torchvision.models.resnet18()
        self.trunk = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
        self.layer4 = r.layer4
        self.box = nn.ModuleList([nn.Conv2d(256, 4, 1), nn.Conv2d(512, 4, 1)])
        self.cls = nn.ModuleList([nn.Conv2d(256, classes, 1), nn.Conv2d(512, classes, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f3 = self.trunk(x)
        outs = []
        for i, f in enumerate((f3, self.layer4(f3))):
            h, w = f.shape[2:]
            stride = x.shape[2] // h
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([xs, ys]).to(f.dtype)[None]
            t = self.box[i](f)
            size = t[:, 2:].clamp(-4, 4).exp() * stride * 2
            outs.append(torch.cat([(grid + t[:, :2].sigmoid()) * stride, size, self.cls[i](f).sigmoid()], 1).flatten(2))
        return torch.cat(outs, 2)


def median_seconds(f: Callable[[], object], runs: int) -> float:
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "det.onnx"
        size = (args.size, args.size)
        export_model(
            ResNetYolo().eval(), path, ["layer4"], size, exporter="torchscript", heads=False, log=lambda _: None
        )
        explainer = Explainer(path, provider="cpu", threads=args.threads)
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        x = explainer._decode([image])[1]
        forward = median_seconds(lambda: explainer.scores(x), args.runs)
        print(f"| {args.size}² ResNet-18 YOLO-style, layer4, {args.threads} threads | ms | × plain forward |")
        print("|---|---|---|")
        print(f"| plain forward | {forward * 1e3:.0f} | 1.00 |")
        for one_forward in (True, False):
            for boxes in (1, 10, 50):

                def run(b: int = boxes, one: bool = one_forward) -> object:
                    return explainer.explain_detections(
                        [image], confidence=0.0, max_boxes=b, eigencam=False, one_forward=one
                    )

                kept = len(run()[0].boxes)
                seconds = median_seconds(run, args.runs)
                design = "one forward, box-axis backward" if one_forward else "forward repeated per box"
                print(f"| {kept} boxes Grad-CAM, {design} | {seconds * 1e3:.0f} | {seconds / forward:.2f} |")


if __name__ == "__main__":
    main()

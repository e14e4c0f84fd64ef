"""Cost of per-box Grad-CAM on a detector vs one plain forward pass (CPU), onnxcam's two designs side by side.

    python bench/detection.py [--size 320] [--runs 5] [--threads 2]

The detector: a random-init ResNet-18 trunk with a two-scale YOLO-style anchor-free head (``[N, 84, A]``, strides
16 and 32), Grad-CAM at ``layer4``. Rows: the explainer graph's plain forward (``Explainer.scores``, gradients off);
``explain_detections`` with ``one_forward=True`` (the forward that finds the boxes saves the box-axis backward's state;
one more run differentiates all boxes through the head only) and ``one_forward=False`` (one seeded row per box: the
forward repeated per box), for 1, 10 and 35 boxes, without EigenCAM; EigenCAM per image (forward + SVD). Then
pytorch-grad-cam on the same PyTorch model: ``GradCAM`` once per box (its tutorials' way) and ``EigenCAM`` per image,
with torch's eager forward. All ratios are to onnxcam's plain forward. Best of ``--runs`` timed runs after one
warm-up (the least disturbed on a shared machine); the load average is printed. Never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from onnxcam_export.api import export_model
from torch import nn

from onnxcam.detection import forward_pass
from onnxcam.explainer import Explainer
from onnxcam.methods import get_method
from onnxcam.postprocess import layer_map


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


def best_seconds(f: Callable[[], object], runs: int) -> float:
    """The fastest of ``runs`` timed calls after one warm-up (on a shared machine, the least disturbed one)."""
    f()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def peer_rows(model: nn.Module, x: np.ndarray, counts: list[int], runs: int) -> list[tuple[str, float]]:
    """pytorch-grad-cam on the same model: its ``GradCAM`` with one box-score target per box (one call per box, as
    its tutorials do) and its ``EigenCAM`` per image; plus the torch eager forward they compare with."""
    from pytorch_grad_cam import EigenCAM, GradCAM

    tensor = torch.from_numpy(x)
    with torch.no_grad():
        anchors = model(tensor)[0, 4:].amax(0).argsort(descending=True)
    rows = [("torch eager forward", best_seconds(lambda: model(tensor), runs))]
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        for count in counts:

            def boxes(n: int = count) -> None:
                for a in anchors[:n].tolist():
                    cam(input_tensor=tensor, targets=[lambda out, a=a: out[4:, a].max()])

            rows.append((f"pytorch-grad-cam GradCAM, {count} boxes (one call per box)", best_seconds(boxes, runs)))
    with EigenCAM(model=model, target_layers=[model.layer4]) as eigen:
        rows.append(
            (
                "pytorch-grad-cam EigenCAM, per image",
                best_seconds(lambda: eigen(input_tensor=tensor, targets=None), runs),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=[1, 10, 35])
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "det.onnx"
        size = (args.size, args.size)
        model = ResNetYolo().eval()
        export_model(model, path, ["layer4"], size, exporter="torchscript", heads=False, log=lambda _: None)
        explainer = Explainer(path, provider="cpu", threads=args.threads)
        image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
        x = explainer._decode([image])[1]
        forward = best_seconds(lambda: explainer.scores(x), args.runs)
        load = os.getloadavg()[0]
        title = f"{args.size}² ResNet-18 YOLO-style, layer4, {args.threads} threads, load {load:.1f}"
        print(f"| {title} | ms | × plain forward |")
        print("|---|---|---|")
        print(f"| onnxcam plain forward | {forward * 1e3:.0f} | 1.00 |")
        for one_forward in (True, False):
            for boxes in args.boxes:

                def run(b: int = boxes, one: bool = one_forward) -> object:
                    return explainer.explain_detections(
                        [image], confidence=0.0, max_boxes=b, eigencam=False, one_forward=one
                    )

                kept = len(run()[0].boxes)
                seconds = best_seconds(run, args.runs)
                design = "box-axis backward on the saved state" if one_forward else "forward repeated per box"
                print(f"| onnxcam {kept} boxes Grad-CAM, {design} | {seconds * 1e3:.0f} | {seconds / forward:.2f} |")
        eigen = get_method("eigencam")

        def eigencam() -> object:
            _, acts, _ = forward_pass(explainer, x, ["layer4"])
            return layer_map(eigen(acts["layer4"]), size)

        seconds = best_seconds(eigencam, args.runs)
        print(f"| onnxcam EigenCAM, per image | {seconds * 1e3:.0f} | {seconds / forward:.2f} |")
        for name, seconds in peer_rows(model, x, args.boxes, args.runs):
            print(f"| {name} | {seconds * 1e3:.0f} | {seconds / forward:.2f} |")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

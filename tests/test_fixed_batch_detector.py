"""A detector whose deployed ONNX file keeps its fixed batch, end to end: export, ``explain_detections``, ``detect``.

``folded_yolo`` is :class:`test_detection.TinyYolo` with a per-channel spatial Softmax gate that folds the batch
into the channels (``[B, C, h, w] → [B·C, h·w]``, as attention blocks write it) at the end of both neck scales
(before the taps) and after each class conv (between the taps and the output: the backward goes through it).
Exported by dynamo at batch ``B`` (1, and 2), its Reshape targets hard-code ``B·C``: the dynamic rewrite cannot run on
``2B`` images, so the explainer graph keeps batch ``B`` (``onnxcam.fixed_batch``), has no box axis, and every box
repeats the forward (chunks of ``B`` images, the last padded). The gate reads the batch from the tensor in PyTorch,
so the references run each image alone: per-box gradients at both default layers vs torch autograd (≤ 1e-4 relative,
max-abs over the box's max-abs), the fused per-box Grad-CAM vs pytorch-grad-cam's ``GradCAM`` over the same two
modules (≤ 1e-4 absolute on maps in [0, 1]), scores vs onnxruntime on the source file, ``B`` images per run (≤ 1e-5
relative), boxes vs our decode + NMS of those scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_onnx_file
from pytorch_grad_cam import GradCAM
from test_detection import SIZE, TinyYolo, _torch_grads
from torch import nn

from onnxcam import contract
from onnxcam.cli import main
from onnxcam.detection import box_seed, detect
from onnxcam.explainer import Explainer
from onnxcam.model_file import describe

TOLERANCE = 1e-4
CONFIDENCE, NMS_IOU = 0.6, 0.5
IMAGES = 3


class FoldedGate(nn.Module):
    """``f · (1 + softmax over h·w of each channel)``, computed on ``f`` reshaped ``[B·C, h·w]``."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, c, h, w = f.shape
        return f * (1 + torch.softmax(f.reshape(b * c, h * w), dim=1).reshape(b, c, h, w))


def folded_yolo() -> TinyYolo:
    torch.manual_seed(0)
    model = TinyYolo()
    model.p3.append(FoldedGate())
    model.p4.append(FoldedGate())
    for i, conv in enumerate(model.cls):
        model.cls[i] = nn.Sequential(conv, FoldedGate())
    with torch.no_grad():  # class scores spread over [0.2, 1] (not all ≈ 0.5): boxes from both scales, image-dependent
        for conv in model.modules():
            if isinstance(conv, nn.Conv2d):
                conv.weight.mul_(2)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> TinyYolo:
    return folded_yolo()


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2"])
def exported(request, model, tmp_path_factory) -> tuple[int, Path, Path, list[str]]:
    """``(B, source file, explainer graph, export log)``: dynamo's file at batch ``B``, exported with default layers."""
    batch = request.param
    folder = tmp_path_factory.mktemp(f"folded_yolo{batch}")
    source = folder / "source.onnx"
    torch.onnx.export(model, (torch.zeros(batch, 3, SIZE, SIZE),), str(source), dynamo=True, opset_version=18)
    logs: list[str] = []
    out = folder / "explainer.onnx"
    export_onnx_file(source, out, None, (SIZE, SIZE), mean=(0.5,), std=(0.25,), log=logs.append)
    return batch, source, out, logs


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return list(np.random.default_rng(3).integers(0, 256, (IMAGES, SIZE, SIZE, 3), dtype=np.uint8))


def source_scores(source: Path, x: np.ndarray, batch: int) -> np.ndarray:
    """The source file's output ``[N, 4 + K, A]`` flattened, ``batch`` images per run (the last run padded with
    copies of its last image), padding dropped."""
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    rows = np.concatenate([x, np.repeat(x[-1:], -len(x) % batch, axis=0)])
    (name,) = [i.name for i in session.get_inputs()]
    out = [session.run(None, {name: rows[i : i + batch]})[0] for i in range(0, len(rows), batch)]
    return np.concatenate(out)[: len(x)].reshape(len(x), -1)


def torch_maps(model: TinyYolo, x: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        p3 = model.p3(model.backbone(torch.from_numpy(x)))
        return p3, model.p4(p3)


def test_batch_kept_said_recorded_and_no_box_axis(exported) -> None:
    """Export says in one line that the batch is kept; metadata, ``info``, the default layers (the neck's two
    scales) and the absence of the box-axis inputs say what the runtime will do."""
    batch, _, path, logs = exported
    kept = [line for line in logs if f"fixed batch of {batch}" in line]
    assert len(kept) == 1 and f"cannot run on a batch of {2 * batch}" in kept[0], logs
    assert any("by default (the neck's scales" in line for line in logs), logs
    assert any(line.startswith("verified against float64 finite differences") for line in logs), logs
    explainer = Explainer(path, provider="cpu")
    assert explainer.metadata.fixed_batch == batch
    assert explainer.metadata.detection.layout == "yolov8" and len(explainer.layers) == 2
    assert contract.BOX_SEED not in {i.name for i in explainer.graph.session.get_inputs()}
    assert f"batch: fixed at {batch}" in describe(path)


def test_scores_and_boxes_are_the_source_files(exported, images) -> None:
    batch, source, path, _ = exported
    explainer = Explainer(path, provider="cpu")
    x = explainer._decode(images)[1]
    reference = source_scores(source, x, batch)
    ours = explainer.scores(x)
    assert ours.shape == reference.shape == (IMAGES, 7 * 80)
    assert np.abs(ours - reference).max() <= 1e-5 * np.abs(reference).max()
    found = explainer.explain_detections(images, confidence=CONFIDENCE, nms_iou=NMS_IOU, eigencam=False)
    detection = explainer.metadata.detection
    for n, result in enumerate(found):
        expected = detect(reference[n], detection, confidence=CONFIDENCE, nms_iou=NMS_IOU)
        assert [(b.anchor, b.class_index) for b in result.boxes] == [(b.anchor, b.class_index) for b in expected]
        for ours_box, box in zip(result.boxes, expected, strict=True):
            assert ours_box.score == pytest.approx(box.score, rel=1e-5)
            assert np.abs(np.subtract(ours_box.xyxy, box.xyxy)).max() <= 1e-4
    assert all(1 <= len(r.boxes) < 80 for r in found), [len(r.boxes) for r in found]


def test_layers_are_the_gated_neck_maps(exported, model, images) -> None:
    """The two default taps are ``p3`` and ``p4`` (each ending in its folded gate), all images in one call."""
    _, _, path, _ = exported
    explainer = Explainer(path, provider="cpu")
    x = explainer._decode(images)[1]
    acts = explainer.run(x, np.full(IMAGES, contract.TOP1, np.int64)).activations
    for layer, reference in zip(explainer.layers, torch_maps(model, x), strict=True):
        assert acts[layer].shape == reference.shape
        assert np.abs(acts[layer] - reference.numpy()).max() <= 1e-5 * float(reference.abs().max())


def test_per_box_gradients_equal_autograd(exported, model, images) -> None:
    """Every box of the three images as one seeded row each, in one call (chunks of ``B`` rows): the gradient at both
    layers equals autograd of the box's class score, its image run alone (relative to the box's largest gradient)."""
    _, _, path, _ = exported
    explainer = Explainer(path, provider="cpu")
    x = explainer._decode(images)[1]
    scores = explainer.scores(x)
    rows, seeds, objectives = [], [], []
    for n in range(IMAGES):
        for box in detect(scores[n], explainer.metadata.detection, confidence=CONFIDENCE, nms_iou=NMS_IOU):
            rows.append(n)
            seeds.append(box_seed(scores[n], explainer.metadata.detection, box))
            objectives.append(lambda out, b=box: out[4 + b.class_index, b.anchor])
    assert len(set(rows)) == IMAGES
    ours = explainer.run(x[rows], np.full(len(rows), contract.TOP1, np.int64), np.stack(seeds)).gradients
    worst = 0.0
    for m, (n, objective) in enumerate(zip(rows, objectives, strict=True)):
        references = _torch_grads(model, ["p3", "p4"], x[n : n + 1], objective)
        pairs = [(ours[la][m], references[name]) for la, name in zip(explainer.layers, ("p3", "p4"), strict=True)]
        scale = max(float(np.abs(ref).max()) for _, ref in pairs)  # a p3 box's gradient at p4 is zero
        worst = max(worst, max(float(np.abs(a - ref).max()) for a, ref in pairs) / scale)
    assert worst <= TOLERANCE, worst


def test_per_box_gradcam_equals_pytorch_grad_cam(exported, model, images) -> None:
    """``explain_detections`` on three images: every box's fused Grad-CAM = pytorch-grad-cam's ``GradCAM`` over
    ``p3`` and ``p4`` with the box's class score as target, its image alone."""
    _, _, path, _ = exported
    explainer = Explainer(path, provider="cpu")
    found = explainer.explain_detections(images, confidence=CONFIDENCE, nms_iou=NMS_IOU)
    x = explainer._decode(images)[1]
    compared, worst = 0, 0.0
    with GradCAM(model=model, target_layers=[model.p3, model.p4]) as cam:
        for n, result in enumerate(found):
            assert result.maps["gradcam"].shape == (len(result.boxes), SIZE, SIZE)
            assert result.eigencam is not None and result.eigencam.shape == (SIZE, SIZE)
            for box, ours in zip(result.boxes, result.maps["gradcam"], strict=True):
                target = lambda out, b=box: out[4 + b.class_index, b.anchor]  # noqa: E731
                ref = cam(input_tensor=torch.from_numpy(x[n : n + 1]), targets=[target])[0]
                worst = max(worst, float(np.abs(ours - ref).max()))
                compared += 1
    assert compared >= IMAGES and worst <= TOLERANCE, (compared, worst)


def test_one_forward_refused_naming_the_fixed_batch(exported, images) -> None:
    batch, _, path, _ = exported
    with pytest.raises(ValueError, match=f"fixed batch of {batch}") as caught:
        Explainer(path, provider="cpu").explain_detections(images[:1], one_forward=True)
    assert "\n" not in str(caught.value)


def test_cli_detect_on_a_folder(exported, model, images, tmp_path) -> None:
    """``onnxcam detect`` on a folder of three images: each image's boxes are those of the source file's scores, and
    each image's first saved map equals pytorch-grad-cam's for that box."""
    batch, source, path, _ = exported
    folder = tmp_path / "images"
    folder.mkdir()
    for n, image in enumerate(images):
        cv2.imwrite(str(folder / f"im{n}.png"), image[..., ::-1])
    out = tmp_path / "out"
    args = ["detect", str(path), str(folder), "-o", str(out), "--confidence", str(CONFIDENCE)]
    args += ["--nms-iou", str(NMS_IOU)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    records = {Path(r["input"]).name: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(records) == ["im0.png", "im1.png", "im2.png"]
    explainer = Explainer(path, provider="cpu")
    x = explainer._decode(images)[1]
    reference = source_scores(source, x, batch)
    with GradCAM(model=model, target_layers=[model.p3, model.p4]) as cam:
        for n in range(IMAGES):
            record = records[f"im{n}.png"]
            expected = detect(reference[n], explainer.metadata.detection, confidence=CONFIDENCE, nms_iou=NMS_IOU)
            assert record["status"] == "ok" and len(record["boxes"]) == len(expected) > 0
            for saved, box in zip(record["boxes"], expected, strict=True):
                assert saved["class_index"] == box.class_index and saved["score"] == pytest.approx(box.score, rel=1e-5)
            maps = np.load(out / f"im{n}.boxes.gradcam.npy")
            assert maps.shape == (len(expected), SIZE, SIZE)
            target = lambda out, b=expected[0]: out[4 + b.class_index, b.anchor]  # noqa: E731
            ref = cam(input_tensor=torch.from_numpy(x[n : n + 1]), targets=[target])[0]
            assert np.abs(maps[0] - ref).max() <= TOLERANCE

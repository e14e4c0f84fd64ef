"""Detectors: per-box gradients and Grad-CAM maps vs torch autograd and pytorch-grad-cam, on a tiny YOLO-style model.

``TinyYolo`` is an anchor-free two-scale head written here (fixed seed, no detector package): a backbone, two neck
maps (``p3`` 8×8 and ``p4`` 4×4 at 64×64 input), per scale a box branch (``cx, cy`` = grid cell + sigmoid offset,
``w, h`` = exp, times the stride, in input pixels) and a sigmoid class branch, concatenated as YOLOv8 exports it,
``[N, 4 + K, A]`` with ``A = 64 + 16``; ``yolov5_model`` adds an objectness row and transposes to ``[N, A, 5 + K]``.
References are independent of the code under test: the box score is read from the PyTorch output by index, the
IoU match uses ``torchvision.ops.box_iou``. Tolerances: gradients ≤ 1e-4 relative (max-abs over max-abs), maps
≤ 1e-4 absolute on the [0, 1] Grad-CAM maps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model
from pytorch_grad_cam import GradCAM
from torch import nn
from torchvision.ops import box_convert, box_iou

from onnxcam.cli import main
from onnxcam.detection import Box, box_seed, detect
from onnxcam.explainer import Explainer

CLASSES = 3
SIZE = 64
BINS = 16  # DFL bins per box side
TOLERANCE = 1e-4


class TinyYolo(nn.Module):
    """Anchor-free two-scale YOLO-style detector: output ``[N, 4 + K, A]`` (cx, cy, w, h in pixels; class σ).

    ``objectness``: a σ objectness row per anchor too, output transposed to ``[N, A, 5 + K]`` (YOLOv5/v7 layout).
    ``dfl``: YOLOv8's box head instead: per anchor 4 × 16 bin logits, Softmax over the bins, a 1×1 conv with weights
    ``0…15`` (:class:`Dfl`) giving the distances left, top, right, bottom in strides from the anchor point (cell
    centre); box = ``(centre + (r − l)/2, (b − t)/2 …, l + r, t + b) × stride`` (Ultralytics ``dist2bbox``).
    """

    def __init__(self, classes: int = CLASSES, objectness: bool = False, dfl: bool = False) -> None:
        super().__init__()
        self.objectness = objectness
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU())
        self.p3 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU())  # 8×8, stride 8
        self.p4 = nn.Sequential(nn.Conv2d(16, 16, 3, 2, 1), nn.SiLU())  # 4×4, stride 16
        self.box = nn.ModuleList(nn.Conv2d(16, 4 * BINS if dfl else 4, 1) for _ in range(2))
        self.cls = nn.ModuleList(nn.Conv2d(16, classes + objectness, 1) for _ in range(2))
        self.dfl = Dfl() if dfl else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p3 = self.p3(self.backbone(x))
        outs = []
        for i, feature in enumerate((p3, self.p4(p3))):
            h, w = feature.shape[2:]
            stride = SIZE // h
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            grid = torch.stack([xs, ys]).to(feature.dtype)[None]
            t = self.box[i](feature)
            if self.dfl is not None:
                ltrb = self.dfl(t.flatten(2)).view(-1, 4, h, w)
                centre = (grid + 0.5 + (ltrb[:, 2:] - ltrb[:, :2]) / 2) * stride
                size = (ltrb[:, :2] + ltrb[:, 2:]) * stride
            else:
                centre = (grid + t[:, :2].sigmoid()) * stride
                size = t[:, 2:].clamp(-4, 4).exp() * stride * 2
            out = torch.cat([centre, size, self.cls[i](feature).sigmoid()], 1)
            outs.append(out.flatten(2))
        out = torch.cat(outs, 2)
        return out.transpose(1, 2) if self.objectness else out


class Dfl(nn.Module):
    """Ultralytics' ``DFL``: ``[N, 4·16, A]`` bin logits → ``[N, 4, A]`` expected distances (Softmax over the 16
    bins, then a frozen 1×1 conv with weights ``0…15``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(BINS, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(BINS, dtype=torch.float32).view(1, BINS, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, BINS, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def yolov5_model() -> TinyYolo:
    return TinyYolo(objectness=True)


def dfl_model() -> TinyYolo:
    return TinyYolo(dfl=True)


def build(make: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return make().eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)


def _export(model: nn.Module, path: Path, layout: str | None, layers: list[str]) -> tuple[nn.Module, Explainer, Path]:
    export_model(
        model,
        path,
        layers=layers,
        input_size=(SIZE, SIZE),
        exporter="torchscript",
        heads=False,
        log=lambda _: None,
        task="detect" if layout else None,
        detect_layout=layout,
    )
    return model, Explainer(path, provider="cpu"), path


@pytest.fixture(scope="module")
def yolov8(tmp_path_factory) -> tuple[nn.Module, Explainer, Path]:
    return _export(build(TinyYolo), tmp_path_factory.mktemp("det") / "v8.onnx", None, ["p3", "p4"])


@pytest.fixture(scope="module")
def dfl(tmp_path_factory) -> tuple[nn.Module, Explainer, Path]:
    return _export(build(dfl_model), tmp_path_factory.mktemp("det") / "dfl.onnx", "yolov8", ["p3", "p4"])


@pytest.fixture(scope="module")
def yolov5(tmp_path_factory) -> tuple[nn.Module, Explainer, Path]:
    return _export(build(yolov5_model), tmp_path_factory.mktemp("det") / "v5.onnx", "yolov5", ["p3"])


def _torch_grads(model: nn.Module, layers: list[str], x: np.ndarray, objective) -> dict[str, np.ndarray]:
    """``∂ objective(model(x)[0]) / ∂ A`` for each layer (forward hooks), float32."""
    found: dict[str, torch.Tensor] = {}
    hooks = [
        dict(model.named_modules())[name].register_forward_hook(lambda _m, _i, o, n=name: found.__setitem__(n, o))
        for name in layers
    ]
    try:
        out = model(torch.from_numpy(x))
        grads = torch.autograd.grad(objective(out[0]), [found[name] for name in layers])
    finally:
        for hook in hooks:
            hook.remove()
    return {name: g[0].numpy() for name, g in zip(layers, grads, strict=True)}


def _relative(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def _boxes(explainer: Explainer, x: np.ndarray) -> tuple[np.ndarray, list[Box]]:
    scores = explainer.scores(x[:1])[0]
    boxes = detect(scores, explainer.metadata.detection, confidence=0.3, nms_iou=0.5)
    assert boxes, "the tiny detector must keep some boxes"
    return scores, boxes


def test_layout_detected_and_stored(yolov8, yolov5) -> None:
    assert yolov8[1].metadata.detection.layout == "yolov8"
    assert yolov8[1].metadata.detection.shape == (4 + CLASSES, 80)
    assert yolov5[1].metadata.detection.shape == (80, 5 + CLASSES)
    assert yolov8[1].scores_kind == "raw"


def test_detect_matches_reference_nms(yolov8, images) -> None:
    """Our decode + OpenCV NMS keeps the boxes torchvision's batched_nms keeps (same threshold, class-aware)."""
    from torchvision.ops import batched_nms

    model, explainer, _ = yolov8
    x = _x(explainer, images)
    out = model(torch.from_numpy(x[:1]))[0].detach().T  # [A, 4 + K]
    conf, cls = out[:, 4:].max(1)
    keep = conf >= 0.3
    xyxy = box_convert(out[keep, :4], "cxcywh", "xyxy")
    ref = batched_nms(xyxy, conf[keep], cls[keep], 0.5)
    ours = detect(explainer.scores(x[:1])[0], explainer.metadata.detection, confidence=0.3, nms_iou=0.5)
    assert sorted(b.anchor for b in ours) == sorted(torch.nonzero(keep)[:, 0][ref].tolist())


def _x(explainer: Explainer, images: np.ndarray) -> np.ndarray:
    return explainer._decode(list(images))[1]


@pytest.mark.parametrize("match_iou", [None, 0.3])
def test_yolov8_box_gradient_equals_autograd(yolov8, images, match_iou) -> None:
    model, explainer, _ = yolov8
    x = _x(explainer, images)
    scores, boxes = _boxes(explainer, x)
    detection = explainer.metadata.detection
    worst = 0.0
    for box in boxes[:4]:
        seed = box_seed(scores, detection, box, match_iou)
        ours = explainer.run(x[:1], np.array([-1]), seed[None]).gradients
        if match_iou is None:
            anchors = torch.tensor([box.anchor])
        else:
            with torch.no_grad():
                decoded = box_convert(model(torch.from_numpy(x[:1]))[0, :4].T, "cxcywh", "xyxy")
            overlaps = box_iou(torch.tensor([box.xyxy]), decoded)[0]
            anchors = torch.nonzero(overlaps >= match_iou)[:, 0]
            assert box.anchor in anchors.tolist()
        ref = _torch_grads(model, ["p3", "p4"], x[:1], lambda out, c=box.class_index, a=anchors: out[4 + c, a].sum())
        for layer in ("p3", "p4"):
            worst = max(worst, _relative(ours[layer][0], ref[layer]))
    assert worst <= TOLERANCE


def test_yolov5_box_gradient_is_confidence_gradient(yolov5, images) -> None:
    """yolov5: the seed's gradient is that of the box confidence objectness × class score."""
    model, explainer, _ = yolov5
    x = _x(explainer, images)
    scores, boxes = _boxes(explainer, x)
    for box in boxes[:3]:
        seed = box_seed(scores, explainer.metadata.detection, box)
        ours = explainer.run(x[:1], np.array([-1]), seed[None]).gradients["p3"][0]
        ref = _torch_grads(model, ["p3"], x[:1], lambda o, b=box: o[b.anchor, 4] * o[b.anchor, 5 + b.class_index])
        assert _relative(ours, ref["p3"]) <= TOLERANCE
        with torch.no_grad():
            out = model(torch.from_numpy(x[:1]))[0, box.anchor]
        assert box.score == pytest.approx(float(out[4] * out[5 + box.class_index]), rel=1e-5)


@pytest.mark.parametrize("one_forward", [True, False])
def test_per_box_gradcam_equals_pytorch_grad_cam(yolov8, images, one_forward) -> None:
    """explain_detections' per-box Grad-CAM on one layer = pytorch-grad-cam GradCAM with the box score as target,
    from one forward pass per image (the box-axis backward) and from one seeded row per box."""
    model, explainer, _ = yolov8
    results = explainer.explain_detections(
        list(images), confidence=0.3, nms_iou=0.5, layers=["p3"], one_forward=one_forward
    )
    x = _x(explainer, images)
    compared = 0
    with GradCAM(model=model, target_layers=[model.p3]) as cam:
        for n, result in enumerate(results):
            assert result.eigencam is not None and result.eigencam.shape == (SIZE, SIZE)
            for box, ours in zip(result.boxes[:3], result.maps["gradcam"][:3], strict=False):
                target = lambda out, b=box: out[4 + b.class_index, b.anchor]  # noqa: E731
                ref = cam(input_tensor=torch.from_numpy(x[n : n + 1]), targets=[target])[0]
                assert np.abs(ours - ref).max() <= TOLERANCE
                compared += 1
    assert compared >= 2


def test_undeclared_transposed_output_is_refused(tmp_path) -> None:
    from onnxcam_export.detection_output import DetectionLayoutError

    with pytest.raises(DetectionLayoutError, match="declare it: --task detect --detect-layout"):
        export_model(
            build(yolov5_model), None, ["p3"], (SIZE, SIZE), exporter="torchscript", verify=False, log=lambda _: None
        )


def test_cli_explain_on_a_detector_writes_boxes_and_maps(yolov8, images, tmp_path) -> None:
    """`onnxcam explain` on a detector's graph: one line per image with its boxes, per-box maps, EigenCAM; `info`
    names the layout."""
    import cv2

    _, explainer, model = yolov8
    cv2.imwrite(str(tmp_path / "a.png"), images[0][..., ::-1])
    out = tmp_path / "out"
    args = ["explain", str(model), str(tmp_path / "a.png"), "-o", str(out)]
    for _ in range(2):  # a second run starts results.jsonl over
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    expected = detect(explainer.scores(_x(explainer, images[:1]))[0], explainer.metadata.detection)
    assert f"a.png: {len(expected)} box" in result.output
    maps = np.load(out / "a.boxes.gradcam.npy")
    assert maps.shape == (len(expected), SIZE, SIZE)
    assert (out / "a.detect.gradcam.png").is_file() and (out / "a.eigencam.png").is_file()
    info = CliRunner().invoke(main, ["info", str(model)], catch_exceptions=False)
    assert f"detector: layout yolov8, raw output [N, {4 + CLASSES}, 80]" in info.output


def test_blank_box_map_is_said_in_one_line(yolov8, images, tmp_path) -> None:
    """``--layer p4`` only: the boxes of the 8×8 scale (anchors < 64) read nothing from p4, so their Grad-CAM is 0
    everywhere. The boxes whose pytorch-grad-cam map (GradCAM on ``model.p4``, the box score as target) is 0
    everywhere, and only those, are named in one warning line in results.jsonl and on stderr."""
    import cv2

    model, explainer, path = yolov8
    cv2.imwrite(str(tmp_path / "a.png"), images[0][..., ::-1])
    out = tmp_path / "out"
    args = ["detect", str(path), str(tmp_path / "a.png"), "-o", str(out), "--layer", "p4", "--confidence", "0.3"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(text) for text in (out / "results.jsonl").read_text().splitlines()]
    boxes = detect(explainer.scores(_x(explainer, images[:1]))[0], explainer.metadata.detection, confidence=0.3)
    assert [b["score"] for b in line["boxes"]] == pytest.approx([b.score for b in boxes], abs=1e-6)
    with GradCAM(model=model, target_layers=[model.p4]) as cam:
        x = torch.from_numpy(_x(explainer, images[:1]))
        blank = [
            k
            for k, b in enumerate(boxes)
            if cam(input_tensor=x, targets=[lambda out, b=b: out[4 + b.class_index, b.anchor]])[0].max() == 0
        ]
    assert blank and len(blank) < len(boxes)  # both kinds of box in this image
    assert all(boxes[k].anchor < 64 for k in blank)
    (warning,) = line["warnings"]  # one line for the one method
    ranges = warning.split(" (")[0].removeprefix("boxes ").removeprefix("box ")
    named = [k for r in ranges.split(", ") for k in range(int(r.split("–")[0]), int(r.split("–")[-1]) + 1)]
    assert named == blank
    assert f"({len(blank)} of {len(boxes)}): gradcam: the map is 0 everywhere: " in warning
    assert "a box from a scale the layer does not feed" in warning
    assert result.stderr.count("warning: ") == 1 and warning in result.stderr


@pytest.mark.parametrize("dynamo", [False, True])
def test_default_layers_are_the_neck_scales(yolov8, images, tmp_path, dynamo) -> None:
    """No layer given: the maps read by both the box and the class branch of each scale (``p3``, also read by the
    conv making ``p4``, and ``p4``), not a head-internal tensor nor a backbone map — from PyTorch (module names) and
    from a plain ONNX file (its tensors, compared with PyTorch's ``p3`` and ``p4`` outputs), also dynamo's (its head
    reshapes ``[N, 7, h·w]`` make the classifier default refuse: a token model's attention)."""
    from onnxcam_export.api import export_onnx_file
    from onnxcam_export.detection_layers import torch_detector_layers

    model = build(TinyYolo)
    assert torch_detector_layers(model, (3, SIZE, SIZE), None, None, None) == ["p3", "p4"]
    assert torch_detector_layers(model, (3, SIZE, SIZE), None, "classify", None) == []
    path = tmp_path / "tiny.onnx"
    opset = 18 if dynamo else 17
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(path), opset_version=opset, dynamo=dynamo)
    lines: list[str] = []
    export_onnx_file(path, tmp_path / "e.onnx", log=lines.append)
    assert any("the neck's scales" in line for line in lines)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert len(explainer.layers) == 2
    x = _x(explainer, images[:1])
    ours = explainer.run(x, np.array([-1]), np.ones((1, *explainer.score_shape), np.float32)).activations
    with torch.no_grad():
        p3 = model.p3(model.backbone(torch.from_numpy(x)))
        p4 = model.p4(p3)
    for layer, reference in zip(explainer.layers, (p3, p4), strict=True):
        assert np.abs(ours[layer] - reference.numpy()).max() <= 1e-5


def test_explain_without_seed_on_a_detector_is_refused(yolov8, images) -> None:
    """A detector's flat top-1 could be a box coordinate: explain() without a seed refuses, naming the way out."""
    with pytest.raises(ValueError, match="explain_detections"):
        yolov8[1].explain(list(images))


@pytest.mark.parametrize("fixture", ["yolov8", "yolov5"])
def test_box_axis_backward_equals_autograd(fixture, images, request) -> None:
    """Boxes of both images on the box axis (``box_rows``), differentiated from the state saved by the forward pass
    that found them (the box run's ``input`` is empty): each row's gradient = autograd of its box."""
    from onnxcam.detection import box_gradients, forward_pass

    model, explainer, _ = request.getfixturevalue(fixture)
    layer = "p3"
    x = _x(explainer, images)
    detection = explainer.metadata.detection
    scores, _, state = forward_pass(explainer, x, [layer])
    assert state, "the graph saves the box-axis backward's state"
    rows, seeds, boxes = [], [], []
    for n in range(len(x)):
        for box in detect(scores[n], detection, confidence=0.3, nms_iou=0.5)[:3]:
            rows.append(n), seeds.append(box_seed(scores[n], detection, box)), boxes.append(box)
    assert len(set(rows)) == 2
    ours = box_gradients(explainer, x, state, np.stack(seeds), np.array(rows), [layer])[layer]
    for m, (n, box) in enumerate(zip(rows, boxes, strict=True)):
        if fixture == "yolov8":
            objective = lambda out, b=box: out[4 + b.class_index, b.anchor]  # noqa: E731
        else:
            objective = lambda out, b=box: out[b.anchor, 4] * out[b.anchor, 5 + b.class_index]  # noqa: E731
        ref = _torch_grads(model, [layer], x[n : n + 1], objective)[layer]
        assert _relative(ours[m], ref) <= TOLERANCE


def test_wrong_box_axis_is_caught_and_removed(yolov8, images, tmp_path) -> None:
    """The export-time check catches a box-axis backward that reads the wrong image (every row gathered from image
    0); removing it leaves a graph whose per-box runs still work."""
    import onnx
    from onnx import helper
    from onnxcam_export.box_gradients import check_box_gradients, remove_box_gradients

    from onnxcam import contract

    model = onnx.load(str(yolov8[2]))
    assert check_box_gradients(model, ["p3", "p4"]) is None
    gate = next(n for n in model.graph.node if n.name == contract.BOX_SWITCH)
    branch = next(a.g for a in gate.attribute if a.name == "then_branch")
    zero = helper.make_node("Constant", [], ["sabotage/zero"], value=helper.make_tensor("z", 7, [], [0]))
    rows = helper.make_node("Mul", [contract.BOX_ROWS, "sabotage/zero"], ["sabotage/rows"])
    gathers = [n for n in branch.node if n.op_type == "Gather" and n.input[1] == contract.BOX_ROWS]
    assert gathers
    for node in gathers:
        node.input[1] = "sabotage/rows"
    branch.node.insert(0, rows)
    branch.node.insert(0, zero)
    assert "differs from the per-box backward" in check_box_gradients(model, ["p3", "p4"])
    remove_box_gradients(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "plain.onnx"))
    explainer = Explainer(tmp_path / "plain.onnx", provider="cpu")
    assert contract.BOX_SEED not in {i.name for i in model.graph.input}
    with pytest.raises(ValueError, match="one_forward"):
        explainer.explain_detections(list(images[:1]), one_forward=True)
    (found,) = explainer.explain_detections(list(images[:1]), confidence=0.3, nms_iou=0.5)
    (reference,) = yolov8[1].explain_detections(list(images[:1]), confidence=0.3, nms_iou=0.5)
    assert np.abs(found.maps["gradcam"] - reference.maps["gradcam"]).max() <= TOLERANCE


def test_output_after_nms_is_refused(tmp_path) -> None:
    """A graph whose output comes after NonMaxSuppression is refused in one line naming NMS and the way out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxcam_export.api import export_onnx_file
    from onnxcam_export.detection_output import DetectionLayoutError

    boxes = numpy_helper.from_array(np.array([[[0, 0, 1, 1], [0, 0, 2, 2], [5, 5, 6, 6]]], np.float32), "boxes")
    nodes = [
        helper.make_node("Relu", ["x"], ["features"]),
        helper.make_node("ReduceMean", ["features"], ["pooled"], axes=[2, 3], keepdims=0),  # [1, 3]
        helper.make_node("Unsqueeze", ["pooled", "one"], ["scores"]),  # [1, 1, 3]: one class, three boxes
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["kept"]),
        helper.make_node("Cast", ["kept"], ["detections"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "nms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [None, 3])],
        [boxes, numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    path = tmp_path / "nms.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(DetectionLayoutError, match=r"after NonMaxSuppression.*without NMS"):
        export_onnx_file(path, None, ["features"], log=lambda _: None)


def test_graph_without_state_repeats_the_forward(yolov8, images, tmp_path) -> None:
    """Without the saved state (graphs exported before it, or the fallback when the empty-input box run fails the
    export check) the box run repeats the forward: still checked, same maps."""
    import onnx
    from onnxcam_export.box_gradients import box_state, check_box_gradients, drop_state

    model = onnx.load(str(yolov8[2]))
    assert box_state(model)
    drop_state(model)
    assert not box_state(model)
    assert check_box_gradients(model, ["p3", "p4"]) is None
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "stateless.onnx"))
    (found,) = Explainer(tmp_path / "stateless.onnx", provider="cpu").explain_detections(
        list(images[:1]), confidence=0.3, nms_iou=0.5, one_forward=True
    )
    (reference,) = yolov8[1].explain_detections(list(images[:1]), confidence=0.3, nms_iou=0.5, one_forward=False)
    assert np.abs(found.maps["gradcam"] - reference.maps["gradcam"]).max() <= TOLERANCE


def test_dfl_box_head_gradients_equal_autograd(dfl, images) -> None:
    """YOLOv8's DFL box head (Softmax over 4 × 16 bins, 1×1 conv with weights 0…15): exported and verified; for kept
    boxes the gradient of the class score and of the decoded box (``Σ cx, cy, w, h`` of its anchor: through the DFL)
    equals autograd, per seeded row and on the box axis from the saved state."""
    from onnxcam.detection import box_gradients, forward_pass

    model, explainer, _ = dfl
    x = _x(explainer, images)
    with torch.no_grad():
        assert np.abs(explainer.scores(x) - model(torch.from_numpy(x)).flatten(1).numpy()).max() <= 1e-3
    scores, _, state = forward_pass(explainer, x[:1], ["p3", "p4"])
    assert state
    detection = explainer.metadata.detection
    boxes = detect(scores[0], detection, confidence=0.3, nms_iou=0.5)[:3]
    assert boxes
    seeds, objectives = [], []
    for box in boxes:
        coordinates = np.zeros(detection.shape, np.float32)
        coordinates[:4, box.anchor] = 1.0
        seeds += [box_seed(scores[0], detection, box), coordinates.reshape(-1)]
        objectives += [
            lambda out, b=box: out[4 + b.class_index, b.anchor],
            lambda out, b=box: out[:4, b.anchor].sum(),
        ]
    rows = np.zeros(len(seeds), np.int64)
    on_axis = box_gradients(explainer, x[:1], state, np.stack(seeds), rows, ["p3", "p4"])
    per_row = explainer.run(x[rows], np.full(len(rows), -1), np.stack(seeds)).gradients
    worst = 0.0
    for m, objective in enumerate(objectives):
        ref = _torch_grads(model, ["p3", "p4"], x[:1], objective)
        for layer in ("p3", "p4"):
            worst = max(worst, _relative(on_axis[layer][m], ref[layer]), _relative(per_row[layer][m], ref[layer]))
    assert worst <= TOLERANCE
    assert any(np.abs(ref[layer]).max() > 0 for layer in ("p3", "p4"))


def test_drise_formula_on_a_tiny_detector() -> None:
    """D-RISE weights recomputed here with loops: w_i = max_j IoU · cos(class vectors) · objectness (yolov5 layout:
    the objectness row; yolov8: the best class score), S = Σ_i w_i M_i / (N p), on a toy numpy 'detector' whose two
    anchors' boxes and scores depend on the masked image."""
    from onnxcam.contract import Detection
    from onnxcam.detection_rise import drise
    from onnxcam.methods.rise import rise_masks

    image = np.random.default_rng(1).random((1, 6, 6))

    def forward(batch: np.ndarray) -> np.ndarray:  # [n, 1, 6, 6] → yolov5 [n, 2 anchors, 5 + 2 classes]
        left, right = batch[:, 0, :, :3].mean((1, 2)), batch[:, 0, :, 3:].mean((1, 2))
        rows = [
            np.stack([1 + left, 2 + 0 * left, 2 + left, 3 + 0 * left, left, left, 1 - left], 1),
            np.stack([4 + 0 * right, 3 + right, 2 + 0 * right, 2 + right, right, 1 - right, right], 1),
        ]
        return np.stack(rows, 1).reshape(len(batch), -1)

    for layout in ("yolov5", "yolov8"):
        detection = Detection("yolov5", (2, 7)) if layout == "yolov5" else Detection("yolov8", (6, 2))
        fwd = forward if layout == "yolov5" else lambda b: _as_yolov8(forward(b))
        scores = fwd(image[None])[0]
        boxes = [Box((0.5, 1.0, 2.5, 3.0), 0, None, 0.5, 0), Box((3.0, 1.5, 5.0, 4.5), 1, None, 0.5, 1)]
        ours = drise(fwd, image, scores, detection, boxes, masks=10, cells=2, keep=0.5, random_seed=3, batch_size=4)
        grids, shifts = (np.random.default_rng(s) for s in np.random.SeedSequence(3).spawn(2))
        masks = np.concatenate([rise_masks(n, (6, 6), 2, 0.5, grids, shifts) for n in (4, 4, 2)])
        out = forward(image[None] * masks[:, None]).reshape(10, 2, 7)
        own = forward(image[None]).reshape(2, 7)
        for b, box in enumerate(boxes):
            target = own[box.anchor, 5:]
            expected = np.zeros((6, 6))
            for i in range(10):
                best = 0.0
                for j in range(2):
                    cx, cy, w, h = out[i, j, :4]
                    corners = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                    iw = max(0.0, min(box.xyxy[2], corners[2]) - max(box.xyxy[0], corners[0]))
                    ih = max(0.0, min(box.xyxy[3], corners[3]) - max(box.xyxy[1], corners[1]))
                    inter = iw * ih
                    union = (box.xyxy[2] - box.xyxy[0]) * (box.xyxy[3] - box.xyxy[1]) + w * h - inter
                    vector = out[i, j, 5:] if layout == "yolov5" else out[i, j, 5:] * out[i, j, 4]
                    reference = target if layout == "yolov5" else target * own[box.anchor, 4]
                    cosine = vector @ reference / (np.linalg.norm(vector) * np.linalg.norm(reference))
                    objectness = out[i, j, 4] if layout == "yolov5" else vector.max()
                    best = max(best, inter / union * cosine * objectness)
                expected += best * masks[i]
            np.testing.assert_allclose(ours[b], expected / (10 * 0.5), rtol=1e-6, atol=1e-9)


def _as_yolov8(flat: np.ndarray) -> np.ndarray:
    """The toy yolov5 output ``[n, 2·7]`` as yolov8 ``[n, (4 + 2)·2]``: box, then objectness × class scores."""
    per_anchor = flat.reshape(len(flat), 2, 7)
    rows = np.concatenate([per_anchor[..., :4], per_anchor[..., 5:] * per_anchor[..., 4:5]], -1)
    return rows.transpose(0, 2, 1).reshape(len(flat), -1)


def test_drise_maps_are_reproducible(yolov8, images) -> None:
    """explain_detections(methods=[…, "drise"]): one [0, 1] map per box; the same random_seed gives the same maps
    (whatever the batch size), another seed other maps."""
    explainer = yolov8[1]

    def run(seed: int, batch: int):
        (found,) = explainer.explain_detections(
            list(images[:1]),
            methods=["gradcam", "drise"],
            confidence=0.3,
            nms_iou=0.5,
            eigencam=False,
            drise_options={"masks": 48, "cells": 4, "random_seed": seed, "batch_size": batch},
        )
        return found

    first = run(0, 16)
    maps = first.maps["drise"]
    assert maps.shape == (len(first.boxes), SIZE, SIZE) and len(first.boxes) > 0
    assert maps.min() >= 0 and maps.max() <= 1 and first.maps["gradcam"].shape == maps.shape
    np.testing.assert_array_equal(run(0, 48).maps["drise"], maps)
    assert np.abs(run(1, 16).maps["drise"] - maps).max() > 1e-3


def test_cli_detect_drise(yolov8, images, tmp_path) -> None:
    """`onnxcam detect --method gradcam,drise`: one map per box for each, D-RISE beside Grad-CAM."""
    import cv2

    cv2.imwrite(str(tmp_path / "a.png"), images[0][..., ::-1])
    out = tmp_path / "out"
    args = ["detect", str(yolov8[2]), str(tmp_path / "a.png"), "-o", str(out), "--method", "gradcam,drise"]
    result = CliRunner().invoke(main, [*args, "--confidence", "0.3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    drise, gradcam = np.load(out / "a.boxes.drise.npy"), np.load(out / "a.boxes.gradcam.npy")
    assert drise.shape == gradcam.shape and len(drise) > 0 and (out / "a.detect.drise.png").is_file()

"""torchvision's one-stage detectors (RetinaNet, FCOS, SSDlite; random init, small inputs) through ``dense_detector``.

References are independent of the code under test: torchvision's own post-processed detections (each must be found
in the dense tensor: same box, same score, at some anchor), torch autograd of the box's class score at its anchor,
and pytorch-grad-cam's ``GradCAM`` with that scalar target. Tolerances: gradients ≤ 1e-4 relative (max-abs over
max-abs), maps ≤ 1e-4 absolute, torchvision's boxes and scores ≤ 1e-3 (float32 forward of two graphs).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from onnxcam_export.api import export_model
from onnxcam_export.torchvision_detectors import dense_detector
from pytorch_grad_cam import GradCAM
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from onnxcam.explainer import Explainer

SIZE = 96
CLASSES = 3
TOLERANCE = 1e-4
pytestmark = pytest.mark.slow


def _retinanet() -> nn.Module:
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4]
    )
    backbone.fpn.extra_blocks = torchvision.ops.feature_pyramid_network.LastLevelP6P7(256, 256)
    return torchvision.models.detection.RetinaNet(backbone, CLASSES, min_size=SIZE, max_size=SIZE)


def _fcos() -> nn.Module:
    backbone = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, trainable_layers=5, returned_layers=[2, 3, 4]
    )
    backbone.fpn.extra_blocks = torchvision.ops.feature_pyramid_network.LastLevelP6P7(256, 256)
    return torchvision.models.detection.FCOS(backbone, CLASSES, min_size=SIZE, max_size=SIZE)


def _ssdlite() -> nn.Module:
    """SSDlite; its random-init activations vanish (1e-13 at the first feature map), so the BatchNorm statistics are
    set from two random batches first (cumulative averages), as a trained model's would be."""
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=CLASSES + 1
    )
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (SIZE,), SIZE, (SIZE, SIZE)
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.reset_running_stats()
        norm.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.head(list(model.backbone(torch.randn(4, 3, SIZE, SIZE)).values()))
    return model.eval()


#: builder, number of scales found as the default layers: FPN P3–P7; SSDlite's feature maps but its last two,
#: which are 1×1 like the one before them at this input size (no change of size: no new scale)
MODELS = {"retinanet": (_retinanet, 5), "fcos": (_fcos, 5), "ssdlite": (_ssdlite, 4)}


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory) -> tuple[str, nn.Module, nn.Module, list[str], Explainer]:
    """The detector, its dense wrapper exported with no layer given (the default: the neck's scales, fused)."""
    build, scales = MODELS[request.param]
    torch.manual_seed(0)
    detector = build().eval()
    if request.param != "ssdlite":  # RetinaNet/FCOS start at σ ≈ 0.01 (prior bias): spread the class logits
        with torch.no_grad():
            last = [m for m in detector.head.classification_head.modules() if isinstance(m, nn.Conv2d)][-1]
            last.weight.mul_(8.0)
            last.bias.zero_()
    dense = dense_detector(detector, (SIZE, SIZE)).eval()
    path = tmp_path_factory.mktemp("tv") / f"{request.param}.onnx"
    export_model(
        dense,
        path,
        None,
        (SIZE, SIZE),
        mean=[0.0],
        std=[1.0],
        exporter="torchscript",
        heads=False,
        log=lambda _: None,
    )
    explainer = Explainer(path, provider="cpu")
    assert len(explainer.layers) == scales
    return request.param, detector, dense, list(explainer.layers), explainer


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def x(exported, images) -> np.ndarray:
    """The preprocessed input: pixels / 255 (the wrapper normalises inside)."""
    return exported[4]._decode(list(images))[1]


def test_torchvision_detections_are_in_the_dense_tensor(exported, x) -> None:
    """Every box torchvision's post-processing keeps is one anchor of the dense output: same box, same score."""
    kind, detector, _, _, explainer = exported
    with torch.no_grad():
        (found,) = detector([torch.from_numpy(x[0])])
    dense = explainer.scores(x)[0].reshape(explainer.metadata.detection.shape)  # [4 + K, A]
    xyxy = torchvision.ops.box_convert(torch.from_numpy(dense[:4].T), "cxcywh", "xyxy").numpy()
    assert len(found["boxes"]) > 0
    for box, score, label in zip(found["boxes"][:20].numpy(), found["scores"][:20], found["labels"][:20], strict=True):
        row = 4 + int(label) - (kind == "ssdlite")  # SSD's label 0 is the background
        close = np.abs(xyxy - box).max(1) <= 1e-3
        assert (close & (np.abs(dense[row] - float(score)) <= 1e-3)).any()


def _gradients(dense: nn.Module, layers: list[str], x: np.ndarray, objective) -> list[np.ndarray]:
    """``∂ objective(dense(x)[0]) / ∂A`` per layer (torch autograd, forward hooks)."""
    found: dict[str, torch.Tensor] = {}
    modules = dict(dense.named_modules())
    hooks = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: found.setdefault(n, o)) for n in layers]
    try:
        out = dense(torch.from_numpy(x))
        grads = torch.autograd.grad(objective(out[0]), [found[n] for n in layers])
    finally:
        for hook in hooks:
            hook.remove()
    return [g.numpy() for g in grads]


def test_per_box_gradient_and_gradcam_equal_references(exported, images, x) -> None:
    """Per kept box, at every scale: the box-axis gradient = autograd of its class score at its anchor (relative to
    the largest over the scales: a box's anchor sits on one level); its fused Grad-CAM map = pytorch-grad-cam's
    GradCAM over the same target layers with that scalar target."""
    from onnxcam.detection import box_gradients, box_seed, forward_pass

    _, _, dense, layers, explainer = exported
    (result,) = explainer.explain_detections(list(images), confidence=0.2, eigencam=False)
    boxes = result.boxes[:3]
    assert boxes
    scores, _, state = forward_pass(explainer, x, layers)
    assert state
    seeds = np.stack([box_seed(scores[0], explainer.metadata.detection, b) for b in boxes])
    ours = box_gradients(explainer, x, state, seeds, np.zeros(len(boxes), np.int64), layers)
    modules = dict(dense.named_modules())
    with GradCAM(model=dense, target_layers=[modules[n] for n in layers]) as cam:
        for m, box in enumerate(boxes):
            objective = lambda out, b=box: out[4 + b.class_index, b.anchor]  # noqa: E731
            ref = _gradients(dense, layers, x, objective)
            scale = max(np.abs(r).max() for r in ref)
            assert scale > 0
            assert max(np.abs(ours[n][m] - r[0]).max() for n, r in zip(layers, ref, strict=True)) / scale <= TOLERANCE
            reference = cam(input_tensor=torch.from_numpy(x), targets=[objective])[0]
            assert np.abs(result.maps["gradcam"][m] - reference).max() <= TOLERANCE


def test_other_models_are_refused() -> None:
    with pytest.raises(TypeError, match="RetinaNet, FCOS or SSD"):
        dense_detector(torchvision.models.resnet18(), (SIZE, SIZE))


def test_float16_retinanet_verified_and_close_to_float32(exported, images, tmp_path) -> None:
    """RetinaNet converted at export (``precision="float16"``) is verified by float64 finite differences of the same
    graph, whose dense ReLU head puts kinks near any draw: the check re-draws images where every rule agrees locally
    (before: refused as "settle at no step"). Its kept boxes' Grad-CAM maps lie within 0.05 of the float32 graph's
    (maps in [0, 1]; the float16 rounding of the head, measured ≤ 0.02)."""
    kind, _, dense, layers, explainer = exported
    if kind != "retinanet":
        pytest.skip("one float16 detector is enough: RetinaNet")
    messages: list[str] = []
    path = tmp_path / "fp16.onnx"
    export_model(
        dense, path, layers, (SIZE, SIZE), mean=[0.0], std=[1.0], exporter="torchscript", heads=False,
        precision="float16", log=messages.append,
    )  # fmt: skip
    assert any(m.startswith("verified against float64 finite differences") for m in messages), messages
    (ref,) = explainer.explain_detections(list(images), confidence=0.2, eigencam=False)
    (ours,) = Explainer(path, provider="cpu").explain_detections(list(images), confidence=0.2, eigencam=False)
    assert ref.boxes and [(b.anchor, b.class_index) for b in ours.boxes[:5]] == [
        (b.anchor, b.class_index) for b in ref.boxes[:5]
    ]
    assert np.abs(ours.maps["gradcam"][:5] - ref.maps["gradcam"][:5]).max() <= 0.05

"""The pytorch-grad-cam drop-in (:mod:`onnxcam.compat`): its classes give the Explainer's maps, and pytorch-grad-cam's
own (PyPI ``grad-cam`` 1.5.x) on the same random-init model, with and without ``aug_smooth`` (ttach's flip × multiply)
and with the linear targets. Small model (:class:`small_models.GapNet`, 32×32, layer ``body.3``): every map lies
after the last ReLU, so float32 onnxruntime and PyTorch agree to ~1e-6; tolerance 1e-4 as the other parity tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    GuidedBackpropReLUModel,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import deprocess_image as reference_deprocess_image
from pytorch_grad_cam.utils.image import preprocess_image as reference_preprocess_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from small_models import GapNet, export_gapnet

from onnxcam import compat
from onnxcam.explainer import Explainer

TOLERANCE = 1e-4
REFERENCE = {
    "GradCAM": (GradCAM, "gradcam"),
    "GradCAMPlusPlus": (GradCAMPlusPlus, "gradcam++"),
    "XGradCAM": (XGradCAM, "xgradcam"),
    "HiResCAM": (HiResCAM, "hirescam"),
    "GradCAMElementWise": (GradCAMElementWise, "gradcamelementwise"),
    "LayerCAM": (LayerCAM, "layercam"),
    "EigenCAM": (EigenCAM, "eigencam"),
    "EigenGradCAM": (EigenGradCAM, "eigengradcam"),
    "ScoreCAM": (ScoreCAM, "scorecam"),
    "AblationCAM": (AblationCAM, "ablationcam"),
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gapnet(tmp_path_factory.mktemp("compat") / "gap.onnx")


@pytest.fixture(scope="module")
def explainer(graph: Path) -> Explainer:
    return Explainer(graph, provider="cpu")


@pytest.fixture(scope="module")
def torch_model() -> GapNet:
    torch.manual_seed(0)  # the same weights export_gapnet exported
    return GapNet().eval()


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)


def _sign_free(ours: np.ndarray, theirs: np.ndarray, name: str) -> float:
    """Max abs difference; Eigen maps are defined up to the SVD's sign, so the better of ``ours`` and ``1 − ours``
    per image is taken for them (see tests/test_parity_gradcam.py)."""
    if not name.startswith("Eigen"):
        return float(np.abs(ours - theirs).max())
    return max(min(np.abs(o - t).max(), np.abs(1 - o - t).max()) for o, t in zip(ours, theirs, strict=True))


@pytest.mark.parametrize("name", list(REFERENCE))
def test_compat_class_equals_the_explainer(name: str, explainer: Explainer, batch: np.ndarray) -> None:
    method = REFERENCE[name][1]
    with getattr(compat, name)(model=explainer, target_layers=["body.3"]) as cam:
        maps = cam(input_tensor=batch, targets=[compat.ClassifierOutputTarget(4), compat.ClassifierOutputTarget(7)])
    expected = explainer.explain_arrays(batch, [4, 7], method, ["body.3"])
    assert maps.shape == (2, 32, 32) and maps.dtype == np.float32
    np.testing.assert_array_equal(maps, np.stack([e.maps[method] for e in expected]))


@pytest.mark.parametrize("aug_smooth", [False, True])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_compat_class_equals_pytorch_grad_cam(
    name: str, aug_smooth: bool, explainer: Explainer, torch_model: GapNet, batch: np.ndarray
) -> None:
    if aug_smooth and name in ("ScoreCAM", "AblationCAM", "EigenCAM", "EigenGradCAM", "GradCAMElementWise"):
        pytest.skip("aug_smooth is one code path for every class: checked on five of them")
    reference_class, _ = REFERENCE[name]
    targets = [ClassifierOutputTarget(4), ClassifierOutputTarget(7)]
    with reference_class(model=torch_model, target_layers=[torch_model.body[3]]) as reference:
        theirs = reference(input_tensor=torch.from_numpy(batch), targets=targets, aug_smooth=aug_smooth)
    with getattr(compat, name)(model=explainer, target_layers=["body.3"]) as cam:
        ours = cam(
            input_tensor=torch.from_numpy(batch),  # a tensor is accepted as pytorch-grad-cam users pass it
            targets=[compat.ClassifierOutputTarget(4), compat.ClassifierOutputTarget(7)],
            aug_smooth=aug_smooth,
        )
    assert ours.shape == theirs.shape
    assert _sign_free(ours, theirs, name) < TOLERANCE


def test_top1_and_raw_scores_targets_and_eigen_smooth_equal_pytorch_grad_cam(
    explainer: Explainer, torch_model: GapNet, batch: np.ndarray
) -> None:
    layer = [torch_model.body[3]]
    with GradCAM(model=torch_model, target_layers=layer) as reference, compat.GradCAM(explainer, ["body.3"]) as cam:
        summed = [lambda output: output.sum()] * 2  # RawScoresOutputTarget's y = Σ scores, as a reference callable
        for ours_targets, their_targets in ((None, None), ([compat.RawScoresOutputTarget()] * 2, summed)):
            theirs = reference(input_tensor=torch.from_numpy(batch), targets=their_targets)
            np.testing.assert_allclose(cam(batch, ours_targets), theirs, atol=TOLERANCE)
        theirs = reference(input_tensor=torch.from_numpy(batch), targets=None, eigen_smooth=True)
        assert _sign_free(cam(batch, None, eigen_smooth=True), theirs, "Eigen") < TOLERANCE


def test_preprocess_image_equals_the_reference() -> None:
    image = np.random.default_rng(0).random((20, 30, 3), dtype=np.float32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    np.testing.assert_allclose(
        compat.preprocess_image(image, mean, std), reference_preprocess_image(image, mean, std).numpy(), atol=1e-6
    )


def test_clear_errors(explainer: Explainer, batch: np.ndarray) -> None:
    cam = compat.GradCAM(explainer, ["body.3"])
    with pytest.raises(ValueError, match=r"input_tensor has shape \(1, 3, 40, 40\); this graph takes \[N, 3, 32, 32\]"):
        cam(np.zeros((1, 3, 40, 40), np.float32))
    with pytest.raises(ValueError, match=r"input_tensor has shape \(3, 32, 32\)"):
        cam(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="1 targets for a batch of 2"):
        cam(batch, [compat.ClassifierOutputTarget(1)])
    with pytest.raises(ValueError, match="target layer 'layer4' is not in this graph"):
        compat.GradCAM(explainer, ["layer4"])
    with pytest.raises(ValueError, match="target dict is not supported"):
        cam(batch, [{}, {}])


def test_guided_backprop_model_equals_pytorch_grad_cam(
    tmp_path_factory: pytest.TempPathFactory, torch_model: GapNet, batch: np.ndarray
) -> None:
    graph = export_gapnet(tmp_path_factory.mktemp("guided") / "gap.onnx", input_gradients=("guided",))
    ours = compat.GuidedBackpropReLUModel(model=graph, device="cpu")
    reference = GuidedBackpropReLUModel(model=torch_model, device="cpu")
    for target in (None, 5):
        theirs = reference(torch.from_numpy(batch[:1]), target_category=target)
        mine = ours(batch[:1], target_category=target)
        assert mine.shape == theirs.shape == (32, 32, 3)
        np.testing.assert_allclose(mine, theirs, rtol=1e-4, atol=1e-6 * np.abs(theirs).max())
        np.testing.assert_array_equal(compat.deprocess_image(theirs), reference_deprocess_image(theirs))
    with pytest.raises(ValueError, match="re-export it with --input-gradient guided"):
        compat.GuidedBackpropReLUModel(model=export_gapnet(tmp_path_factory.mktemp("plain") / "gap.onnx"))

"""Final maps equal pytorch-grad-cam's (PyPI ``grad-cam`` 1.5.x) on real torchvision architectures.

Same model (random init, eval), same layer, same batch of two real photos (ImageNet normalisation), same targets;
ours runs the exported graph on onnxruntime CPU. Tolerance: 1e-4 max absolute difference on the final [0, 1] maps.
Eigen-CAM / Eigen-Grad-CAM: equal up to the sign the SVD picks (a singular vector is defined up to ±; both libraries
keep the sign their LAPACK call returns), so those compare against our map of the negated projection too.
XGrad-CAM divides by ``Σ_ij A_k``, which nearly cancels for channels of signed (pre-ReLU) maps such as DenseNet's
``denseblock4``: float32 rounding of ``A`` (~1e-6 relative, onnxruntime vs PyTorch) is amplified by
``κ = max_k Σ|A_k| / |Σ A_k|`` (1452 there), so its tolerance is ``max(1e-4, 1e-6·κ)``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model
from onnxcam_export.sources import load_torchvision
from pytorch_grad_cam import (
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage import data

from onnxcam import compat
from onnxcam.explainer import Explainer
from onnxcam.methods import get_method
from onnxcam.postprocess import postprocess

TOLERANCE = 1e-4
REFERENCE = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "gradcamelementwise": GradCAMElementWise,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "eigengradcam": EigenGradCAM,
}
# model, layers (module names), targets: None = top-1 for every image
CASES = [
    ("resnet50", ["layer4"], [281, None]),
    ("mobilenet_v3_large", ["features.16"], [None, 967]),
    ("densenet121", ["features.denseblock4"], [281, 967]),
    ("resnet50", ["layer3", "layer4"], [None, 967]),
]


def photos() -> np.ndarray:
    """chelsea (cat) and coffee (espresso), 224×224, ImageNet-normalised, NCHW float32."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = [cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR) for img in (data.chelsea(), data.coffee())]
    return np.stack([((i / 255.0 - mean) / std).transpose(2, 0, 1) for i in images]).astype(np.float32)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'+'.join(c[1])}")
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    name, layers, targets = request.param
    torch.manual_seed(0)
    model = load_torchvision(name).eval()
    path = tmp_path_factory.mktemp("parity") / f"{name}.onnx"
    export_model(model, path, layers, log=lambda _: None)
    return model, layers, targets, Explainer(path, provider="cpu")


def reference_maps(model: torch.nn.Module, layers: list[str], method: str, x: np.ndarray, targets: list) -> np.ndarray:
    modules = dict(model.named_modules())
    with REFERENCE[method](model=model, target_layers=[modules[n] for n in layers]) as cam:
        wanted = None if all(t is None for t in targets) else targets
        if wanted is not None:  # pytorch-grad-cam needs explicit classes for a mixed batch: use the top-1 ones
            top1 = model(torch.from_numpy(x)).argmax(1).tolist()
            wanted = [ClassifierOutputTarget(t if t is not None else top1[i]) for i, t in enumerate(targets)]
        return cam(input_tensor=torch.from_numpy(x), targets=wanted)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(REFERENCE))
def test_maps_match_pytorch_grad_cam(case, method: str) -> None:
    model, layers, targets, explainer = case
    x = photos()
    ref = reference_maps(model, layers, method, x, targets)
    results = explainer.explain_arrays(x, [-1 if t is None else t for t in targets], [method])
    ours = np.stack([r.maps[method] for r in results])
    assert ours.shape == ref.shape == (2, 224, 224)
    error = float(np.abs(ours - ref).max())
    if method.startswith("eigen") and error > TOLERANCE:
        flipped = postprocess([-np.stack([r.raw[method][layer] for r in results]) for layer in layers], (224, 224))
        error = min(error, float(np.abs(flipped - ref).max()))
    tolerance = TOLERANCE
    if method == "xgradcam":
        maps = explainer.run(x, np.zeros(2, np.int64)).activations
        kappa = max(float((np.abs(a).sum(axis=(2, 3)) / np.abs(a.sum(axis=(2, 3)))).max()) for a in maps.values())
        tolerance = max(TOLERANCE, 1e-6 * kappa)
    assert error <= tolerance, f"{method}: max |ours − pytorch-grad-cam| = {error:.2e} > {tolerance:.1e}"
    assert float(ours.max()) > float(ours.min()), "map is constant"


def test_compat_front_door_equals_explainer(case) -> None:
    _, layers, targets, explainer = case
    x = photos()
    cam = compat.GradCAMPlusPlus(model=explainer, target_layers=layers)
    wanted = [compat.ClassifierOutputTarget(t if t is not None else 0) for t in targets]
    grayscale = cam(input_tensor=x, targets=wanted)
    direct = explainer.explain_arrays(x, [t.category for t in wanted], ["gradcam++"], layers)
    np.testing.assert_array_equal(grayscale, np.stack([r.maps["gradcam++"] for r in direct]))
    assert get_method("Grad-CAM++").name == "gradcam++"


def test_explainer_file_path_round_trip(case, tmp_path: Path) -> None:
    *_, explainer = case
    results = explainer.explain([data.chelsea()], methods=["gradcam"])
    assert results[0].image_size == data.chelsea().shape[:2]
    assert results[0].maps["gradcam"].min() >= 0.0 and results[0].maps["gradcam"].max() <= 1.0

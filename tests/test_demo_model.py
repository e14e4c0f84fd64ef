"""The built-in default: the real pretrained EfficientNet-Lite0 recipe, exported and run on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnxcam_export.api import export_source
from skimage import data

from onnxcam.explainer import Explainer

ROOT = Path(__file__).resolve().parents[1]
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Explainer:
    path = tmp_path_factory.mktemp("demo") / "efficientnet_lite0.onnx"
    _, report = export_source(f"{ROOT}/models/efficientnet_lite0.py:build", [], path, log=lambda _: None)
    assert report is not None and report.worst <= 1e-4
    return Explainer(path, provider="cpu")


@pytest.mark.slow
def test_recipe_metadata(demo: Explainer) -> None:
    assert demo.layers == ("_swish#2",)  # the head's activated map (the shared ReLU6's second call), not its BatchNorm
    assert demo.labels is not None and len(demo.labels) == 1000 and demo.labels[ESPRESSO] == "espresso"
    assert demo.preprocess.mean == pytest.approx((127 / 255,) * 3)
    assert demo.preprocess.std == pytest.approx((128 / 255,) * 3)


@pytest.mark.slow
def test_real_photos_are_recognised_and_maps_are_informative(demo: Explainer) -> None:
    cat, coffee = demo.explain([data.chelsea(), data.coffee()], methods=["gradcam", "eigencam"])
    assert cat.class_index in CATS, cat.topk
    assert coffee.class_index == ESPRESSO, coffee.topk
    for result in (cat, coffee):
        for method, cam in result.maps.items():
            assert cam.shape == (224, 224)
            assert float(cam.max()) == pytest.approx(1.0, abs=1e-6), method
            assert float(np.std(cam)) > 0.05, f"{method} map is (nearly) constant"
    # the cat's map peaks on the cat's face, not in the background corners
    h, w = cat.maps["gradcam"].shape
    centre = cat.maps["gradcam"][h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean()
    assert centre > cat.maps["gradcam"].mean()


@pytest.mark.slow
def test_score_cam_and_xgrad_cam_see_the_cat(demo: Explainer) -> None:
    """On the pre-activation BatchNorm output Score-CAM was all zero and XGrad-CAM peaked in a corner (issue 11)."""
    (cat,) = demo.explain([data.chelsea()], methods=["scorecam", "xgradcam"])
    for method, cam in cat.maps.items():
        h, w = cam.shape
        assert float(np.std(cam)) > 0.05, f"{method} map is (nearly) constant"
        assert cam[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].mean() > cam.mean(), method

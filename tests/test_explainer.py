"""The Python API over a small explainer graph: top-k, targets, layers, CAM, preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from small_models import export_gapnet

from onnxcam import contract
from onnxcam.explainer import Explainer
from onnxcam.preprocess import preprocess
from onnxcam.targets import TargetError

LABELS = [f"class {i}" for i in range(12)]


@pytest.fixture(scope="module")
def explainer(tmp_path_factory: pytest.TempPathFactory) -> Explainer:
    path = export_gapnet(tmp_path_factory.mktemp("api") / "gap.onnx", ["body.1", "body.3"], labels=LABELS)
    return Explainer(path, provider="cpu")


def batch(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)


def test_topk_is_the_softmax_ranking(explainer: Explainer) -> None:
    x = batch()
    scores = explainer.run(x, np.full(3, -1, np.int64)).scores.astype(np.float64)
    probs = np.exp(scores - scores.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for n, result in enumerate(explainer.explain_arrays(x, topk=4)):
        expected = np.argsort(-probs[n])[:4]
        assert [k for k, _, _ in result.topk] == expected.tolist()
        assert [p for _, _, p in result.topk] == pytest.approx(probs[n, expected].tolist(), rel=1e-6)
        assert result.class_index == expected[0] and result.label == LABELS[expected[0]]


def test_targets_by_index_label_and_top1(explainer: Explainer) -> None:
    results = explainer.explain_arrays(batch(), ["class 7", 3, None])
    assert [r.class_index for r in results[:2]] == [7, 3]
    assert results[2].class_index == results[2].topk[0][0]
    with pytest.raises(TargetError, match="did you mean 1 'class 1'"):
        explainer.explain_arrays(batch(1), "klass 1")
    with pytest.raises(TargetError, match="out of range"):
        explainer.explain_arrays(batch(1), 12)


def test_layer_selection_and_raw_maps(explainer: Explainer) -> None:
    [both] = explainer.explain_arrays(batch(1), methods=["gradcam"])
    [last] = explainer.explain_arrays(batch(1), methods=["gradcam"], layers=["body.3"])
    assert set(both.raw["gradcam"]) == {"body.1", "body.3"}
    assert both.raw["gradcam"]["body.1"].shape == (32, 32) and both.raw["gradcam"]["body.3"].shape == (16, 16)
    assert not np.allclose(both.maps["gradcam"], last.maps["gradcam"])
    with pytest.raises(ValueError, match="not in this graph"):
        explainer.explain_arrays(batch(1), layers=["fc"])


def test_cam_equals_gradcam_times_positions_on_a_gap_linear_head(explainer: Explainer) -> None:
    [result] = explainer.explain_arrays(batch(1), methods=["cam", "gradcam"], layers=["body.3"])
    np.testing.assert_allclose(result.raw["cam"]["body.3"], 16 * 16 * result.raw["gradcam"]["body.3"], rtol=1e-4)
    with pytest.raises(ValueError, match="global-average-pooling"):
        explainer.explain_arrays(batch(1), methods=["cam"], layers=["body.1"])


def test_preprocessing_follows_the_metadata(explainer: Explainer) -> None:
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), np.uint8)
    x = preprocess(image, explainer.preprocess)
    spec = contract.Preprocess(input_size=(32, 32))
    assert explainer.preprocess == spec
    import cv2

    manual = (cv2.resize(image, (32, 32)).astype(np.float32) / 255 - np.array(spec.mean)) / np.array(spec.std)
    np.testing.assert_allclose(x, manual.transpose(2, 0, 1), atol=1e-5)
    [from_image] = explainer.explain([image])
    [from_array] = explainer.explain_arrays(x[None])
    np.testing.assert_array_equal(from_image.maps["gradcam"], from_array.maps["gradcam"])
    assert from_image.image_size == (40, 50)


def test_path_input(explainer: Explainer, tmp_path: Path) -> None:
    import cv2

    image = np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image[..., ::-1])
    [result] = explainer.explain(tmp_path / "x.png")
    [direct] = explainer.explain([image])
    np.testing.assert_array_equal(result.maps["gradcam"], direct.maps["gradcam"])

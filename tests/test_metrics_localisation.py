"""Pointing game, sparseness (Gini) and complexity (entropy) against formulas written independently here: the
pointing distance by brute force over the object's pixels, the Gini index as the mean absolute difference
``Σ_ij |a_i − a_j| / (2 n Σ a)``, the entropy by ``scipy.stats.entropy``. Tolerance 1e-12 (float64 sums).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import entropy as scipy_entropy

from onnxcam.metrics import evaluate_maps
from onnxcam.metrics.localisation import pointing_hit


class MeanModel:
    """A :class:`ModelAccess` with two logits (the metrics here never look at them)."""

    def scores(self, x: np.ndarray) -> np.ndarray:
        return np.stack([x.mean(axis=(1, 2, 3)), -x.mean(axis=(1, 2, 3))], axis=1)


def scored(maps: np.ndarray, metrics: list[str], **options: object) -> list[dict[str, float]]:
    x = np.zeros((len(maps), 3, *maps.shape[1:]), np.float32)
    found = evaluate_maps(MeanModel(), x, np.array([1.0, 0.0]), {"m": maps}, metrics, options)
    return [image["m"] for image in found]


def peak_at(y: int, x: int, size: int = 64) -> np.ndarray:
    m = np.zeros((size, size), np.float32)
    m[y, x] = 1.0
    return m


def brute_force_hit(saliency: np.ndarray, region: np.ndarray, tolerance: float) -> bool:
    y, x = np.unravel_index(np.argmax(saliency), saliency.shape)
    ry, rx = np.nonzero(region)
    return bool(np.sqrt((ry - y) ** 2 + (rx - x) ** 2).min() <= tolerance)


@pytest.mark.parametrize("peak", [(30, 30), (30, 49), (30, 51), (50, 50), (60, 2), (5, 5)])
def test_pointing_game_with_a_box_and_the_paper_tolerance(peak: tuple[int, int]) -> None:
    region = np.zeros((64, 64), bool)
    region[25:41, 20:36] = True
    saliency = peak_at(*peak)
    expected = brute_force_hit(saliency, region, 15.0)
    assert scored(
        saliency[None], ["pointing_game"], pointing_box="20,25,35,40"
    )  # x0, y0, x1, y1[0]["pointing_game"] == expected
    assert pointing_hit(saliency, region) == expected
    assert pointing_hit(saliency, region, 0.0) == bool(region[peak])


def test_pointing_game_per_image_boxes_and_masks() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((2, 48, 48)).astype(np.float32)
    peaks = [np.unravel_index(np.argmax(m), m.shape) for m in maps]
    boxes = [peaks[0][1], peaks[0][0], peaks[0][1], peaks[0][0], 0, 0, 0, 0]  # image 0: its peak; image 1: pixel (0, 0)
    found = scored(maps, ["pointing_game"], pointing_box=boxes, pointing_tolerance=0)
    assert [f["pointing_game"] for f in found] == [1.0, float(peaks[1] == (0, 0))]
    for _ in range(20):
        region = rng.random((48, 48)) < 0.01
        region[rng.integers(48), rng.integers(48)] = True
        tolerance = float(rng.uniform(0, 20))
        assert pointing_hit(maps[0], region, tolerance) == brute_force_hit(maps[0], region, tolerance)


def test_pointing_game_without_an_object_says_how_to_give_one() -> None:
    with pytest.raises(ValueError, match="option pointing_box=x0,y0,x1,y1"):
        scored(peak_at(3, 3)[None], ["pointing_game"])
    with pytest.raises(ValueError, match="region is empty"):
        pointing_hit(peak_at(3, 3), np.zeros((64, 64), bool))


def test_sparseness_is_the_gini_index_and_complexity_the_entropy() -> None:
    rng = np.random.default_rng(1)
    maps = np.stack([rng.random((24, 24)), rng.random((24, 24)) ** 8, np.zeros((24, 24)), peak_at(3, 4, 24)])
    found = scored(maps.astype(np.float32), ["sparseness", "complexity"])
    for m, values in zip(maps.astype(np.float32).astype(np.float64), found, strict=True):
        a = m.ravel()
        gini = np.abs(a[:, None] - a[None, :]).sum() / (2 * a.size * a.sum()) if a.sum() else 0.0
        expected_entropy = scipy_entropy(a) if a.sum() else np.log(a.size)
        assert values["sparseness"] == pytest.approx(gini, abs=1e-12)
        assert values["complexity"] == pytest.approx(expected_entropy, abs=1e-12)
    assert found[1]["sparseness"] > found[0]["sparseness"] and found[1]["complexity"] < found[0]["complexity"]
    assert found[3]["complexity"] == 0.0 and found[3]["sparseness"] == pytest.approx(1 - 1 / 576)

"""Map agreement measures (``onnxcam compare``) vs scipy's reference implementations."""

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from onnxcam.compare import agreement, average_ranks, rank_correlation, top_overlap

RNG = np.random.default_rng(0)


def test_ranks_and_correlation_match_scipy_with_ties() -> None:
    a = np.maximum(RNG.standard_normal((16, 16)), 0)  # ReLU'd like a Grad-CAM map: many tied zeros
    b = np.maximum(a + 0.5 * RNG.standard_normal((16, 16)), 0)
    np.testing.assert_allclose(average_ranks(a), rankdata(a.ravel()) - 1)
    assert rank_correlation(a, b) == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-12)
    assert rank_correlation(a, a) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)
    assert rank_correlation(a, np.zeros_like(a)) == 0.0


def test_top_overlap() -> None:
    a = np.arange(100.0).reshape(10, 10)
    assert top_overlap(a, a, 0.1) == 1.0
    assert top_overlap(a, -a, 0.1) == 0.0
    shifted = np.roll(a.ravel(), 5).reshape(10, 10)  # top 10 of a: 90..99; of shifted: positions 95..99, 0..4
    assert top_overlap(a, shifted, 0.1) == pytest.approx(0.5)


def test_agreement_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="resize"):
        agreement(1, np.zeros((4, 4)), 1, np.zeros((8, 8)))

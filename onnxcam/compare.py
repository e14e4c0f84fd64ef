"""How much does deployment (float16, int8) move the explanation? Agreement of two models' maps on the same images.

Per image: whether both models predict the same class, the Spearman rank correlation of their maps (the figure the
saliency-sanity literature uses to compare maps: Adebayo et al. 2018, "Sanity Checks for Saliency Maps"), and the
overlap of their top-``fraction`` pixels. Pure functions over arrays; the CLI is ``onnxcam compare``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks ``0 … n−1`` of the flattened ``values``, ties sharing their mean rank (as ``scipy.stats.rankdata``)."""
    flat = np.asarray(values, np.float64).ravel()
    _, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # rank after each distinct value's block
    return (ends - (counts + 1) / 2.0)[inverse]


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of two maps of one shape: the Pearson correlation of their average ranks; 0 when one is
    constant (no order to agree with)."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    scale = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / scale) if scale > 0 else 0.0


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.1) -> float:
    """Share of ``a``'s top-``fraction`` pixels that are also among ``b``'s (``k = ceil(fraction·n)`` each; ties
    broken by position)."""
    flat_a, flat_b = np.asarray(a).ravel(), np.asarray(b).ravel()
    k = max(1, int(np.ceil(fraction * flat_a.size)))
    top_a = np.argpartition(-flat_a, k - 1)[:k]
    top_b = np.argpartition(-flat_b, k - 1)[:k]
    return len(np.intersect1d(top_a, top_b)) / k


@dataclass(frozen=True)
class Agreement:
    """One image: classes of models A and B, Spearman ρ and top-fraction overlap of their maps."""

    class_a: int
    class_b: int
    correlation: float
    overlap: float

    @property
    def same_class(self) -> bool:
        return self.class_a == self.class_b


def agreement(class_a: int, map_a: np.ndarray, class_b: int, map_b: np.ndarray, fraction: float = 0.1) -> Agreement:
    """:class:`Agreement` of two maps of one shape (resize first when the networks' resolutions differ)."""
    if map_a.shape != map_b.shape:
        raise ValueError(f"maps of shapes {map_a.shape} and {map_b.shape}: resize one to the other first")
    return Agreement(class_a, class_b, rank_correlation(map_a, map_b), top_overlap(map_a, map_b, fraction))

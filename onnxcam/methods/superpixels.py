"""Superpixels for the surrogate methods (LIME, KernelSHAP): scikit-image's SLIC or quickshift, and the inputs in
which chosen superpixels are hidden.

scikit-image and scikit-learn are an optional extra (``pip install 'onnxcam[lime]'``), imported only when a surrogate
method runs; without them the method refuses in one line naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

EXTRA = "lime"
SEGMENTATIONS = ("slic", "quickshift")
#: quickshift parameters of the ``lime`` package's default ``SegmentationAlgorithm`` (on a [0, 1] image).
QUICKSHIFT = {"kernel_size": 4, "max_dist": 200, "ratio": 0.2}


def optional(module: str, method: str) -> ModuleType:
    """Import ``module`` (``"skimage.segmentation"``, ``"sklearn.linear_model"``…) or raise ImportError in one line
    naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0].replace("skimage", "scikit-image").replace("sklearn", "scikit-learn")
        raise ImportError(f"{method} needs {package}: pip install 'onnxcam[{EXTRA}]'") from None


def display_image(x: np.ndarray) -> np.ndarray:
    """A preprocessed image ``[C, H, W]`` as ``[H, W, C]`` float64 in ``[0, 1]``, each channel min-max rescaled (undoes
    a per-channel mean/std normalisation up to the channel's range, which is what the segmentation sees)."""
    image = np.asarray(x, np.float64).transpose(1, 2, 0)
    low = image.min(axis=(0, 1), keepdims=True)
    span = image.max(axis=(0, 1), keepdims=True) - low
    return (image - low) / np.where(span > 0, span, 1.0)


def segment(x: np.ndarray, algorithm: str, n_segments: int, compactness: float, method: str) -> np.ndarray:
    """Superpixel labels ``[H, W]`` (int64, ``0 … F − 1``, every label used) of a preprocessed image ``[C, H, W]``.

    ``slic``: ``skimage.segmentation.slic(image, n_segments, compactness, start_label=0)`` (in CIELAB for 3 channels);
    ``quickshift``: ``skimage.segmentation.quickshift`` with the ``lime`` package's defaults (:data:`QUICKSHIFT`).
    Both run on :func:`display_image`. Raises ImportError naming the extra when scikit-image is missing.
    """
    segmentation = optional("skimage.segmentation", method)
    image = display_image(x)
    rgb = image.shape[2] == 3
    if algorithm == "quickshift":
        labels = segmentation.quickshift(image if rgb else np.repeat(image[..., :1], 3, axis=2), **QUICKSHIFT)
    else:
        labels = segmentation.slic(
            image if image.shape[2] > 1 else image[..., 0],
            n_segments=n_segments,
            compactness=compactness,
            start_label=0,
            channel_axis=-1 if image.shape[2] > 1 else None,
            convert2lab=rgb,
        )
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


def given_segments(value: np.ndarray, n: int, size: tuple[int, int]) -> np.ndarray:
    """Superpixel labels given by the caller (option ``superpixels``: ``[H, W]`` for every image or ``[N, H, W]``) for
    image ``n``, relabelled ``0 … F − 1``; a wrong shape raises ValueError naming the option."""
    labels = np.asarray(value)
    if labels.shape == size:
        one = labels
    elif labels.shape[1:] == size and len(labels) > n:
        one = labels[n]
    else:
        raise ValueError(
            f"option 'superpixels' must be [H, W] = {size} or [N, H, W] integer labels, got {labels.shape}"
        )
    return np.unique(one, return_inverse=True)[1].reshape(size).astype(np.int64)


def hidden(image: np.ndarray, baseline: np.ndarray, segments: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Inputs ``[M, C, H, W]``: ``image`` ``[C, H, W]`` where superpixel ``f`` is kept (``keep[m, f]`` true), the
    ``baseline`` ``[C, H, W]`` elsewhere; ``keep`` ``[M, F]`` binary."""
    shown = np.asarray(keep, bool)[:, segments]
    return np.where(shown[:, None], image[None], baseline[None]).astype(image.dtype)

"""KPCA-CAM (Karmani et al. 2024, arXiv:2410.00267) — docs/METHODS.md, "Gradient-weighted maps";
pytorch-grad-cam's ``KPCA_CAM``. Needs scikit-learn (the optional ``kpca`` extra)."""

from __future__ import annotations

import numpy as np

from .base import register
from .options import MethodOption, declare_options
from .request import MethodRequest, ModelMethod

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")
KERNEL = MethodOption("kernel", "choice", "sigmoid", "kernel of the kernel PCA", choices=KERNELS)
GAMMA = MethodOption("gamma", "number", None, "kernel coefficient (default 1/K)", low=0.0)


def kernel_projection(activations: np.ndarray, kernel: str = "sigmoid", gamma: float | None = None) -> np.ndarray:
    """Each image's first kernel principal component ``[N, h, w]`` (float32) of its activations ``[N, K, h, w]``.

    ``X`` is one image's map as ``[Z, K]`` (``Z = h·w`` samples of ``K`` features, NaN → 0), centred per channel;
    ``M`` its projection on the first component of ``sklearn.decomposition.KernelPCA(n_components=1, kernel,
    gamma)`` (``gamma=None``: ``1/K``), whose sign scikit-learn fixes (``svd_flip``). pytorch-grad-cam's
    ``get_2d_projection_kernel``. Raises ValueError (one line) when scikit-learn is missing.
    """
    try:
        from sklearn.decomposition import KernelPCA
    except ImportError:
        raise ValueError("KPCA-CAM needs scikit-learn: pip install 'onnxcam[kpca]' (or scikit-learn)") from None
    n, k, h, w = activations.shape
    maps = np.zeros((n, h, w), np.float32)
    for i, image in enumerate(np.where(np.isnan(activations), np.float32(0), activations)):
        x = image.reshape(k, h * w).T
        x = x - x.mean(axis=0)
        maps[i] = KernelPCA(n_components=1, kernel=kernel, gamma=gamma).fit_transform(x).reshape(h, w)
    return maps


def kpca_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw KPCA-CAM map ``[N, h, w]``: :func:`kernel_projection` of the layer's activations (no gradients, no extra
    model pass). Options: ``kernel`` (default ``sigmoid``), ``gamma`` (default ``1/K``)."""
    return kernel_projection(request.activations[layer], KERNEL.read(request), GAMMA.read(request))


KPCA_CAM = register(
    ModelMethod("kpcacam", kpca_cam, "first kernel principal component of the activations", resolution="layer")
)
declare_options("kpcacam", KERNEL, GAMMA)

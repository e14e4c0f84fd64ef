"""FinerCAM (Zhang et al., CVPR 2025, arXiv:2501.11309) — docs/METHODS.md, "Gradient-weighted maps";
pytorch-grad-cam's ``FinerCAM`` with its ``FinerWeightedTarget``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import CamMethod, get_method, register
from .options import MethodOption, declare_options
from .request import MethodRequest, ModelMethod

#: The CAM methods FinerCAM can weight with its gradient (pytorch-grad-cam's ``base_method``).
BASES = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcamelementwise", "eigengradcam")
ALPHA = MethodOption("alpha", "number", 1.0, "weight of the similar classes' scores", low=0.0)
COMPARISONS = MethodOption("comparisons", "int", 3, "number of most similar classes compared")
BASE = MethodOption("base", "choice", "gradcam", "CAM method applied to the FinerCAM gradient", choices=BASES)
_EPS = 1e-9


def similar_classes(scores: np.ndarray, main: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` classes (``≤ K − 1``) whose logits are closest to the main class's, per image ``[N, count]``:
    ranks ``1..count`` of ``argsort |z − z_main|`` (rank 0 is the main class itself), as pytorch-grad-cam."""
    z = scores.astype(np.float64)
    order = np.argsort(np.abs(z - z[np.arange(len(z)), main][:, None]), axis=-1)
    others = np.array([row[row != c] for row, c in zip(order, main, strict=True)])
    return others[:, : min(count, z.shape[1] - 1)]


def finer_seed(scores: np.ndarray, main: np.ndarray, similar: np.ndarray, alpha: float) -> np.ndarray:
    """``∂T/∂z`` ``[N, K]`` (float32) of FinerCAM's target at the logits ``z`` ``[N, K]``:

    ``T = Σ_j p_j (z_c − α z_j) / (Σ_j p_j + 1e-9)`` over the similar classes ``j`` (``p = softmax(z)``, ``c`` the
    main class). The layer gradient of ``T`` is that of the linear target with this seed (chain rule), so one
    backward pass with it gives FinerCAM's gradient exactly.
    """
    z = scores.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    rows = np.arange(len(z))[:, None]
    pj, zj = p[rows, similar], z[rows, similar]  # [N, J]
    zc = z[rows[:, 0], main][:, None]
    numerator, denominator = (pj * (zc - alpha * zj)).sum(axis=1), pj.sum(axis=1) + _EPS
    # ∂p_j/∂z_k = p_j (δ_jk − p_k)
    dp = -pj[:, :, None] * p[:, None, :]
    dp[rows, np.arange(similar.shape[1])[None, :], similar] += pj
    d_numerator = np.einsum("nj,njk->nk", zc - alpha * zj, dp)
    d_numerator[rows[:, 0], main] += pj.sum(axis=1)
    np.add.at(d_numerator, (np.repeat(rows, similar.shape[1], axis=1), similar), -alpha * pj)
    d_denominator = dp.sum(axis=1)
    grad = (d_numerator * denominator[:, None] - numerator[:, None] * d_denominator) / denominator[:, None] ** 2
    return grad.astype(np.float32)


def main_classes(seed: np.ndarray) -> np.ndarray:
    """The explained class of each one-hot seed row ``[N, K]`` → ``[N]``; ValueError for any other target."""
    if seed.ndim != 2 or not np.all((seed == 0) | (seed == 1)) or not np.all(seed.sum(axis=1) == 1):
        raise ValueError("FinerCAM explains one class of a classifier's [N, K] logits: give a class target (or top1)")
    return seed.argmax(axis=1)


def finer_cam(request: MethodRequest, layer: str | None) -> np.ndarray:
    """Raw FinerCAM map ``[N, h, w]``: the ``base`` CAM (default Grad-CAM) of ``∂T/∂A`` (:func:`finer_seed`).

    Options: ``alpha`` (default 1), ``comparisons`` (default 3 most similar classes), ``base``. Cost: one extra
    forward + backward pass per image (per layer). Errors: a target other than one class of ``[N, K]`` logits.
    """
    main = main_classes(request.seed)
    similar = similar_classes(request.scores, main, COMPARISONS.read(request))
    seed = finer_seed(request.scores, main, similar, ALPHA.read(request))
    _, grads = request.model.layer_outputs(request.x, seed)
    base: CamMethod = get_method(BASE.read(request))  # type: ignore[assignment]  (every BASES entry is a CAM)
    return base(request.activations[layer], grads[layer])


def lacks_seed(explainer: Any, layers: Sequence[str]) -> str | None:
    """Why ``explainer``'s graph cannot serve FinerCAM (no ``seed`` input: an older export), or ``None``."""
    return None if explainer.has_seed else "finercam needs the graph's 'seed' input: re-export it with this onnxcam"


FINER_CAM = register(
    ModelMethod(
        "finercam",
        finer_cam,
        "gradient of the score gap to the most similar classes",
        resolution="layer",
        refusal=lacks_seed,
    )
)
declare_options("finercam", ALPHA, COMPARISONS, BASE)

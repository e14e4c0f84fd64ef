"""ROAD's noisy linear imputation (Rong et al., ICML 2022; docs/METHODS.md, Faithfulness metrics) by a sparse solve.

Every removed pixel becomes the weighted mean of its in-image 8-neighbours (edge neighbours ``1/6``, diagonals
``1/12``), kept pixels stay fixed: per channel, the sparse linear system of the reference (pytorch-grad-cam's
``NoisyLinearImputer``)

    ``D_i u_i − Σ_{j ∈ N(i), removed} w_ij u_j = Σ_{j ∈ N(i), kept} w_ij x_j``  with  ``D_i = Σ_{j ∈ N(i)} w_ij``

over the removed pixels ``i`` (``N(i)``: the neighbours inside the image); then ``noise · N(0, 1)`` is added to every
removed value. The matrix is factorised once (scipy's ``splu``, SuperLU, minimum-degree ordering of ``A + Aᵀ``: A is
symmetric) and solved for all channels: an exact solve, as the reference's ``spsolve``. scipy is an optional extra
(``pip install 'onnxcam[metrics]'``), imported on first use.
"""

from __future__ import annotations

import importlib

import numpy as np

#: The 8 neighbour offsets ``(dy, dx)`` and their weights.
NEIGHBOURS = tuple(
    ((dy, dx), 1 / 6 if dy == 0 or dx == 0 else 1 / 12) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
)


def _sparse() -> tuple:
    """``(scipy.sparse, scipy.sparse.linalg)``, or ImportError in one line naming the extra."""
    try:
        return importlib.import_module("scipy.sparse"), importlib.import_module("scipy.sparse.linalg")
    except ImportError:
        raise ImportError("ROAD's imputation needs scipy: pip install 'onnxcam[metrics]'") from None


def linear_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` ``[C, H, W]`` with the ``removed`` pixels ``[H, W]`` (bool) linearly imputed, float64.

    With no pixel kept there is nothing to interpolate from (the system is singular): every pixel becomes 0, the
    normalised image's mean colour.
    """
    removed = np.asarray(removed, bool)
    out = np.array(image, np.float64)
    if removed.all():
        return np.zeros_like(out)
    if not removed.any():
        return out
    sparse, linalg = _sparse()
    height, width = removed.shape
    ys, xs = np.nonzero(removed)
    unknown = len(ys)
    index = np.full((height, width), -1)
    index[ys, xs] = np.arange(unknown)
    diagonal = np.zeros(unknown)
    b = np.zeros((unknown, out.shape[0]))
    rows, cols, values = [np.arange(unknown)], [np.arange(unknown)], []
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = np.flatnonzero((ny >= 0) & (ny < height) & (nx >= 0) & (nx < width))
        ny, nx = ny[inside], nx[inside]
        j = index[ny, nx]
        diagonal[inside] += weight
        rows.append(inside[j >= 0])
        cols.append(j[j >= 0])
        values.append(np.full(int((j >= 0).sum()), -weight))
        b[inside[j < 0]] += weight * out[:, ny[j < 0], nx[j < 0]].T
    matrix = sparse.csc_matrix(
        (np.concatenate([diagonal, *values]), (np.concatenate(rows), np.concatenate(cols))), shape=(unknown, unknown)
    )
    factor = linalg.splu(matrix, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True})  # A is symmetric
    out[:, ys, xs] = factor.solve(b).T
    return out


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """:func:`linear_imputation` plus ``noise · N(0, 1)`` (drawn from ``rng``) at every removed pixel and channel."""
    out = linear_imputation(image, removed)
    if noise:
        out += noise * rng.standard_normal(out.shape) * np.asarray(removed, bool)
    return out

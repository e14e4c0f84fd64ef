"""ROAD's noisy linear imputation (Rong et al., ICML 2022; docs/METHODS.md, Faithfulness metrics) in numpy alone.

Every removed pixel becomes the weighted mean of its in-image 8-neighbours (edge neighbours ``1/6``, diagonals
``1/12``), kept pixels stay fixed: per channel, the sparse linear system of the reference (pytorch-grad-cam's
``NoisyLinearImputer``)

    ``D_i u_i − Σ_{j ∈ N(i), removed} w_ij u_j = Σ_{j ∈ N(i), kept} w_ij x_j``  with  ``D_i = Σ_{j ∈ N(i)} w_ij``

over the removed pixels ``i`` (``N(i)``: the neighbours inside the image); then ``noise · N(0, 1)`` is added to every
removed value. With one pixel kept the matrix is symmetric positive definite; it is solved by conjugate gradients
preconditioned with an aggregation multigrid V-cycle (2×2 blocks, Galerkin coarse stencils, damped Jacobi), to a
relative residual ``tol`` per channel: about 15 iterations at 224×224 whatever the mask, so the cost grows with the
pixel count only (no scipy needed).
"""

from __future__ import annotations

import numpy as np

#: The 3×3 stencil offsets ``(dy, dx)`` in raster order; index 4 is the pixel itself.
OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
CENTRE = 4
#: Reference neighbour weights (0 for the pixel itself).
WEIGHTS = np.array([0.0 if (dy, dx) == (0, 0) else 1 / 6 if dy == 0 or dx == 0 else 1 / 12 for dy, dx in OFFSETS])

SWEEPS = 2  # damped Jacobi sweeps before and after each coarse correction
OMEGA = 0.7  # Jacobi damping (the stencil's Jacobi iteration matrix has spectrum in (−1, 1))
OVERCORRECTION = 1.6  # piecewise-constant coarse grids are too stiff; scaling their correction halves the iterations
COARSEST_SWEEPS = 20
MAX_ITERATIONS = 500


class ImputationError(ArithmeticError):
    """The conjugate-gradient solve did not reach its tolerance (not expected for a valid mask)."""


def neighbours(u: np.ndarray) -> list[np.ndarray]:
    """The nine views ``u[..., y + dy, x + dx]`` (zero outside the grid) in :data:`OFFSETS` order."""
    h, w = u.shape[-2:]
    padded = np.pad(u, [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)])
    return [padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in OFFSETS]


def apply_stencil(coef: np.ndarray, u: np.ndarray) -> np.ndarray:
    """``(A u)_i = Σ_k coef[k, i] · u[i + offset_k]`` for a variable 9-point stencil ``coef`` ``[9, h, w]``."""
    views = neighbours(u)
    out = coef[0] * views[0]
    for k in range(1, len(OFFSETS)):
        out += coef[k] * views[k]
    return out


def system(removed: np.ndarray) -> np.ndarray:
    """The matrix over the removed pixels as a stencil ``[9, H, W]``: rows and columns of kept pixels are zero."""
    r = removed.astype(np.float64)
    inside = np.stack(neighbours(np.ones_like(r)))
    coef = -WEIGHTS[:, None, None] * r * np.stack(neighbours(r))
    coef[CENTRE] = r * np.tensordot(WEIGHTS, inside, axes=1)
    return coef


def right_hand_side(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``b_i = Σ_{j ∈ N(i), kept} w_ij x_j`` at removed pixels, 0 elsewhere; ``image`` ``[C, H, W]``."""
    known = np.where(removed, 0.0, image.astype(np.float64))
    return removed * np.tensordot(WEIGHTS, np.stack(neighbours(known)), axes=1)


def coarsen(coef: np.ndarray) -> np.ndarray:
    """Galerkin coarse stencil ``Pᵀ A P`` for ``P`` = piecewise constant on 2×2 blocks (odd sizes padded)."""
    _, h, w = coef.shape
    coef = np.pad(coef, ((0, 0), (0, h % 2), (0, w % 2)))
    coarse = np.zeros((len(OFFSETS), (h + 1) // 2, (w + 1) // 2))
    for sy in (0, 1):
        for sx in (0, 1):
            for k, (dy, dx) in enumerate(OFFSETS):
                coarse[((sy + dy) // 2 + 1) * 3 + (sx + dx) // 2 + 1] += coef[k, sy::2, sx::2]
    return coarse


def restrict(r: np.ndarray) -> np.ndarray:
    """``Pᵀ r``: sums over 2×2 blocks of ``[C, h, w]`` (odd sizes padded with zeros)."""
    _, h, w = r.shape
    r = np.pad(r, ((0, 0), (0, h % 2), (0, w % 2)))
    return r[:, 0::2, 0::2] + r[:, 1::2, 0::2] + r[:, 0::2, 1::2] + r[:, 1::2, 1::2]


def prolong(e: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``P e``: each coarse value copied to its 2×2 block, cropped to ``shape`` ``(h, w)``."""
    return e.repeat(2, axis=1).repeat(2, axis=2)[:, : shape[0], : shape[1]]


def hierarchy(coef: np.ndarray) -> list[np.ndarray]:
    """The stencils of all levels, finest first, down to a grid of at most 2 pixels on a side."""
    levels = [coef]
    while min(levels[-1].shape[1:]) > 2:
        levels.append(coarsen(levels[-1]))
    return levels


def v_cycle(levels: list[np.ndarray], b: np.ndarray, level: int = 0) -> np.ndarray:
    """One symmetric V-cycle from zero for ``A u = b`` (``SWEEPS`` damped Jacobi sweeps on each side)."""
    coef = levels[level]
    diagonal = coef[CENTRE]
    unknown = diagonal > 0
    inverse = OMEGA * np.where(unknown, 1.0 / np.where(unknown, diagonal, 1.0), 0.0)
    u = inverse * b
    coarsest = level == len(levels) - 1
    for _ in range((COARSEST_SWEEPS if coarsest else SWEEPS) - 1):
        u += inverse * (b - apply_stencil(coef, u))
    if coarsest:
        return u
    correction = v_cycle(levels, restrict(b - apply_stencil(coef, u)), level + 1)
    u += OVERCORRECTION * unknown * prolong(correction, b.shape[1:])
    for _ in range(SWEEPS):
        u += inverse * (b - apply_stencil(coef, u))
    return u


def solve(coef: np.ndarray, b: np.ndarray, tol: float) -> np.ndarray:
    """Preconditioned conjugate gradients for ``A u = b``, one system per channel of ``b`` ``[C, h, w]``.

    Stops when ``‖r_c‖ ≤ tol · ‖b_c‖`` for every channel ``c``; raises :class:`ImputationError` after
    ``MAX_ITERATIONS``.
    """
    levels = hierarchy(coef)
    limit = tol * np.sqrt(_dot(b, b))
    u = np.zeros_like(b)
    r = b.copy()
    z = v_cycle(levels, r)
    p = z.copy()
    rz = _dot(r, z)
    for _ in range(MAX_ITERATIONS):
        if np.all(np.sqrt(_dot(r, r)) <= limit):
            return u
        q = apply_stencil(coef, p)
        alpha = _ratio(rz, _dot(p, q))
        u += alpha * p
        r -= alpha * q
        z = v_cycle(levels, r)
        rz, previous = _dot(r, z), rz
        p = z + _ratio(rz, previous) * p
    raise ImputationError(f"linear imputation did not converge in {MAX_ITERATIONS} iterations")


def linear_imputation(image: np.ndarray, removed: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """``image`` ``[C, H, W]`` with the ``removed`` pixels ``[H, W]`` (bool) linearly imputed, float64.

    With no pixel kept there is nothing to interpolate from (the system is singular): every pixel becomes 0, the
    normalised image's mean colour.
    """
    removed = np.asarray(removed, bool)
    out = np.array(image, np.float64)
    if removed.all():
        return np.zeros_like(out)
    if removed.any():
        rows, cols = (np.flatnonzero(removed.any(axis=a)) for a in (1, 0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # kept pixels outside only feed b
        u = solve(system(removed)[:, box[0], box[1]], right_hand_side(out, removed)[:, box[0], box[1]], tol)
        out[:, box[0], box[1]] = np.where(removed[box], u, out[:, box[0], box[1]])
    return out


def noisy_linear_imputation(
    image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator, tol: float = 1e-6
) -> np.ndarray:
    """:func:`linear_imputation` plus ``noise · N(0, 1)`` (drawn from ``rng``) at every removed pixel and channel."""
    out = linear_imputation(image, removed, tol)
    if noise:
        out += noise * rng.standard_normal(out.shape) * np.asarray(removed, bool)
    return out


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-channel inner products ``[C, 1, 1]``."""
    return np.einsum("chw,chw->c", a, b)[:, None, None]


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a / b``, 0 where ``b = 0`` (a channel already solved exactly)."""
    return np.divide(a, b, out=np.zeros_like(a), where=b != 0)

"""RISE (Petsiuk et al., BMVC 2018) — docs/METHODS.md, "Perturbation maps"."""

from __future__ import annotations

import cv2
import numpy as np

from ..progress import chunks
from ..scores import RAW
from .base import register
from .options import BATCH_SIZE, MethodOption, declare_options
from .perturbation import SCORE_KINDS, explained
from .request import MethodRequest, ModelMethod

MASKS = MethodOption("masks", "int", 4000, "number of random masks")
CELLS = MethodOption("cells", "int", 7, "grid cells per side")
KEEP = MethodOption("p", "number", 0.5, "probability that a cell is kept", low=1e-6, high=1.0)
RANDOM_SEED = MethodOption("random_seed", "seed", 0, "seed of the masks")
SCORE = MethodOption("score", "choice", "probability", "score weighting each mask", choices=SCORE_KINDS)


def rise_masks(
    count: int, size: tuple[int, int], cells: int, keep: float, grids: np.random.Generator, shifts: np.random.Generator
) -> np.ndarray:
    """``count`` soft masks ``[count, H, W]`` (float32, values in [0, 1]) for ``size = (H, W)``.

    Each is a ``cells × cells`` grid of Bernoulli(``keep``) cells, upsampled bilinearly (``cv2.INTER_LINEAR``) to
    ``(cells + 1)·⌈H/cells⌉ × (cells + 1)·⌈W/cells⌉`` and cropped to ``H × W`` at a random shift in
    ``[0, ⌈H/cells⌉) × [0, ⌈W/cells⌉)`` (the RISE paper's recipe). ``grids`` draws the cells, ``shifts`` the crops.
    """
    height, width = size
    cell_h, cell_w = -(-height // cells), -(-width // cells)
    grid = (grids.random((count, cells, cells)) < keep).astype(np.float32)
    offsets = shifts.integers(0, (cell_h, cell_w), size=(count, 2))
    up_size = ((cells + 1) * cell_w, (cells + 1) * cell_h)
    return np.stack(
        [
            cv2.resize(g, up_size, interpolation=cv2.INTER_LINEAR)[y : y + height, x : x + width]
            for g, (y, x) in zip(grid, offsets, strict=True)
        ]
    )


def rise(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """Saliency ``[N, 1, H, W]``: ``S = Σ_n y(x ⊙ m_n) · m_n / (N · p)`` over ``N`` random masks :func:`rise_masks`.

    ``y`` is the probability of ``Σ seed ⊙ scores`` (RISE's choice; softmax, or sigmoid for a sigmoid head, see
    :mod:`onnxcam.scores`) or the score itself (``score="logit"``, the default for ``raw`` scores).
    Options: ``masks`` (N, default 4000), ``cells`` (grid cells per side, default 7), ``p`` (keep probability,
    default 0.5), ``random_seed`` (default 0: the same masks for the same seed, whatever ``batch_size``),
    ``score`` (``"probability"`` or ``"logit"``), ``batch_size`` (masks per model run, default 64).
    Cost: ``N`` forward passes per image; every image sees the same masks.
    """
    count, cells, keep = MASKS.read(request), CELLS.read(request), KEEP.read(request)
    given = request.option("score", None)
    kind = SCORE.read(request) if given is not None or request.scores_kind != RAW else "logit"
    batch_size = BATCH_SIZE.read(request)
    grids, shifts = (np.random.default_rng(s) for s in np.random.SeedSequence(RANDOM_SEED.read(request)).spawn(2))
    n_images, _, height, width = request.x.shape
    saliency = np.zeros((n_images, height * width))
    for start, stop in chunks(count, batch_size, "RISE masks", unit="mask"):
        masks = rise_masks(stop - start, (height, width), cells, keep, grids, shifts)
        for n, image in enumerate(request.x):
            scores = request.model.scores(image[None] * masks[:, None])
            y = explained(scores, request.seed[n : n + 1], kind, request.scores_kind)
            saliency[n] += y @ masks.reshape(len(masks), -1)
    return (saliency / (count * keep)).reshape(n_images, 1, height, width)


RISE = register(
    ModelMethod("rise", rise, "score-weighted mean of random masks", resolution="input", reduce=lambda a: a[:, 0])
)
declare_options("rise", MASKS, CELLS, KEEP, RANDOM_SEED, SCORE, BATCH_SIZE)

"""D-RISE: per-box saliency of a detector from random masks (Petsiuk et al., CVPR 2021, "Black-box explanation of
object detectors via saliency maps").

Masks ``M_i`` are RISE's (:func:`onnxcam.methods.rise.rise_masks`: a ``cells × cells`` Bernoulli(``p``) grid,
upsampled, randomly shifted). The masked image's proposals ``d_j = (L_j, O_j, P_j)`` — every anchor of the dense
output, before NMS: box ``L_j`` (``xyxy``), objectness ``O_j`` and class vector ``P_j`` — are compared with the target
box ``d_t = (L_t, P_t)`` (its box and its anchor's class vector in the unmasked image):

``w_i = max_j IoU(L_t, L_j) · cos(P_t, P_j) · O_j``,  ``S_t = Σ_i w_i · M_i / (N · p)``.

``O_j`` is the objectness of the ``yolov5`` layout; the ``yolov8`` layout has none, and its best class score stands
for it (with ``O_j = 1`` a near-empty proposal, whose class vector is tiny but points the same way, would weigh as
much as a confident one: the cosine ignores scale). ``P_j`` are the class scores as the output holds them.
Cost: ``N`` forward passes per image, whatever the number of boxes (all boxes share the masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .contract import Detection
from .detection import Box, to_xyxy
from .methods.rise import rise_masks
from .progress import chunks

#: Defaults: the paper's grid (16 × 16 cells, p = 0.5); it used 5000 masks, fewer here to keep a CPU run short.
MASKS, CELLS, KEEP = 1000, 16, 0.5


def proposals(scores: np.ndarray, detection: Detection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat scores ``[M, D·A]`` → boxes ``xyxy`` ``[M, A, 4]``, class vectors ``[M, A, K]``, objectness ``[M, A]``."""
    per_anchor = scores.reshape(len(scores), *detection.shape)
    if detection.layout == "yolov8":
        per_anchor = per_anchor.transpose(0, 2, 1)
        classes = per_anchor[..., 4:]
        return to_xyxy(per_anchor[..., :4]), classes, classes.max(-1)
    return to_xyxy(per_anchor[..., :4]), per_anchor[..., 5:], per_anchor[..., 4]


def similarity(
    boxes: np.ndarray, vectors: np.ndarray, xyxy: np.ndarray, classes: np.ndarray, objectness: np.ndarray
) -> np.ndarray:
    """``w[b, m] = max_j IoU(boxes_b, xyxy_mj) · cos(vectors_b, classes_mj) · objectness_mj``: targets ``boxes``
    ``[B, 4]`` with class ``vectors`` ``[B, K]`` against proposals (:func:`proposals`) → ``[B, M]``."""
    lo = np.maximum(boxes[:, None, None, :2], xyxy[None, ..., :2])
    hi = np.minimum(boxes[:, None, None, 2:], xyxy[None, ..., 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=-1)
    area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=-1)[:, None, None]
    areas = np.prod(np.clip(xyxy[..., 2:] - xyxy[..., :2], 0, None), axis=-1)[None]
    iou = inter / np.maximum(area + areas - inter, 1e-12)
    dot = np.einsum("bk,mak->bma", vectors, classes)
    norms = np.linalg.norm(vectors, axis=-1)[:, None, None] * np.linalg.norm(classes, axis=-1)[None]
    return (iou * dot / np.maximum(norms, 1e-12) * objectness[None]).max(-1)


def drise(
    forward: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    scores: np.ndarray,
    detection: Detection,
    boxes: Sequence[Box],
    masks: int = MASKS,
    cells: int = CELLS,
    keep: float = KEEP,
    random_seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """D-RISE saliency ``[B, H, W]`` (float64, unnormalised) of ``boxes`` found in one preprocessed ``image``
    ``[C, H, W]`` whose flat scores are ``scores`` ``[D·A]``; ``forward`` maps a batch ``[n, C, H, W]`` to flat scores
    ``[n, D·A]`` (e.g. :meth:`Explainer.scores`). The same ``random_seed`` gives the same masks, whatever
    ``batch_size``."""
    if not len(boxes):
        return np.zeros((0, *image.shape[1:]))
    _, height, width = image.shape
    _, own, _ = proposals(scores[None], detection)
    targets = np.array([b.xyxy for b in boxes], np.float64)
    vectors = own[0, [b.anchor for b in boxes]].astype(np.float64)
    grids, shifts = (np.random.default_rng(s) for s in np.random.SeedSequence(random_seed).spawn(2))
    saliency = np.zeros((len(boxes), height * width))
    for start, stop in chunks(masks, batch_size, "D-RISE masks", unit="mask"):
        batch = rise_masks(stop - start, (height, width), cells, keep, grids, shifts)
        found = proposals(forward(image[None] * batch[:, None]).astype(np.float64), detection)
        saliency += similarity(targets, vectors, *found) @ batch.reshape(len(batch), -1)
    return (saliency / (masks * keep)).reshape(len(boxes), height, width)

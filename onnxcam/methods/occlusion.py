"""Occlusion (Zeiler & Fergus, ECCV 2014) — docs/METHODS.md, "Perturbation maps";
``captum.attr.Occlusion`` semantics."""

from __future__ import annotations

import numpy as np

from .base import register
from .options import BATCH_SIZE, MethodOption, declare_options
from .perturbation import SCORE_KINDS, explained, perturbed_objective
from .request import MethodRequest, ModelMethod

PATCH = MethodOption("patch", "pair", 32, "patch size in input pixels, n or (h, w)")
STRIDE = MethodOption("stride", "pair", 16, "step between patches, at most the patch")
BASELINE = MethodOption("baseline", "array", 0.0, "fill value of the patch, in the preprocessed input's units")
SCORE = MethodOption("score", "choice", "logit", "score whose drop is measured", choices=SCORE_KINDS)


def window_starts(size: int, patch: int, stride: int) -> np.ndarray:
    """Start of every window along one axis: ``0, s, 2s, …``, ``⌈(size − patch)/s⌉ + 1`` of them (captum's shift
    counts); the last window may stick out of the image and is cut off there."""
    if patch > size:
        raise ValueError(f"occlusion patch {patch} is larger than the input ({size})")
    if stride > patch:
        raise ValueError(f"occlusion stride {stride} is larger than the patch {patch}: some pixels would be skipped")
    return np.arange(int(np.ceil((size - patch) / stride)) + 1) * stride


def occlusion(request: MethodRequest, layer: str | None = None) -> np.ndarray:
    """Attributions ``[N, C, H, W]``: the drop ``y(x) − y(x with a patch set to the baseline)`` averaged over the
    patches covering each pixel (a patch spans all channels: captum's ``sliding_window_shapes=(C, p, p)``).

    Options: ``patch`` (size, int or (h, w), default 32), ``stride`` (default 16, at most ``patch``), ``baseline``
    (fill value: a number or an array broadcastable to the input, default 0), ``score`` (``"logit"``, default, or
    ``"probability"``: the drop of the probability, :func:`onnxcam.scores.target_probability`), ``batch_size``
    (default 64).
    Cost: one forward pass per patch position per image (``⌈(H − p)/s⌉ + 1`` times the same for ``W``).
    """
    patch, stride, kind = PATCH.read(request), STRIDE.read(request), SCORE.read(request)
    batch_size = BATCH_SIZE.read(request)
    baseline = BASELINE.read(request)
    _, _, height, width = request.x.shape
    rows = window_starts(height, patch[0], stride[0])
    cols = window_starts(width, patch[1], stride[1])
    corners = [(r, c) for r in rows for c in cols]
    reference = explained(request.scores, request.seed, kind, request.scores_kind)
    attributions = np.zeros(request.x.shape, np.float64)
    for n, image in enumerate(request.x):

        def occluded(start: int, stop: int, n: int = n, image: np.ndarray = image) -> np.ndarray:
            batch = np.repeat(image[None], stop - start, axis=0)
            for i, (r, c) in enumerate(corners[start:stop]):
                window = np.s_[:, r : r + patch[0], c : c + patch[1]]
                batch[i][window] = baseline[n][window]
            return batch

        seed = request.seed[n : n + 1]
        occluded_y = perturbed_objective(
            request.model.scores,
            occluded,
            len(corners),
            seed,
            batch_size,
            kind,
            request.scores_kind,
            desc="occlusion patches",
        )
        total = np.zeros((height, width))
        count = np.zeros((height, width))
        for drop, (r, c) in zip(reference[n] - occluded_y, corners, strict=True):
            total[r : r + patch[0], c : c + patch[1]] += drop
            count[r : r + patch[0], c : c + patch[1]] += 1
        attributions[n] = total / count
    return attributions


OCCLUSION = register(
    ModelMethod(
        "occlusion",
        occlusion,
        "score drop when a sliding patch is set to the baseline",
        resolution="input",
        reduce=lambda a: a.mean(axis=1),
    )
)


def check_windows(values: dict, input_size: tuple[int, int]) -> None:
    """The patch fits the input and the stride skips no pixel, on both axes (before any image)."""
    for axis in (0, 1):
        window_starts(input_size[axis], values["patch"][axis], values["stride"][axis])


declare_options("occlusion", PATCH, STRIDE, BASELINE, SCORE, BATCH_SIZE, check=check_windows)

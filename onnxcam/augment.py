"""Test-time augmentation smoothing (``aug_smooth``), pytorch-grad-cam's: the maps of augmented copies of the input,
each brought back to the input's frame, averaged. Its default ttach transforms: horizontal flip × multiply the
(preprocessed) input by 0.9, 1, 1.1 — six copies, so six times the method's cost.

:func:`explain_augmented` applies it to every method of :meth:`onnxcam.Explainer.explain_arrays` (final maps, raw
layer maps and input attributions; the class each image explains is fixed by the unaugmented input, and the metrics
score the averaged map); :class:`onnxcam.compat.BaseCAM` uses :func:`augment` and :func:`deaugment` as pytorch-grad-cam
does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .score_clip import clip_warning

if TYPE_CHECKING:
    from .explainer import Explainer, Explanation

#: ttach's ``HorizontalFlip`` × ``Multiply(factors=[0.9, 1, 1.1])``, in ttach's product order: ``(flip, factor)``.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def augment(x: np.ndarray, flip: bool, factor: float) -> np.ndarray:
    """``x`` ``[N, C, H, W]`` mirrored left–right when ``flip``, times ``factor`` (float32, contiguous)."""
    return np.ascontiguousarray((x[..., ::-1] if flip else x) * np.float32(factor))


def deaugment(values: np.ndarray, flip: bool) -> np.ndarray:
    """Maps or attributions ``[..., h, w]`` of an augmented input brought back to the input's frame."""
    return values[..., ::-1] if flip else values


def explain_augmented(
    explainer: Explainer,
    x: np.ndarray,
    target: Any,
    methods: Sequence[str],
    layers: Sequence[str] | None,
    topk: int,
    eigen_smooth: bool,
    seed: np.ndarray | None,
    options: dict[str, Any] | None,
    metrics: Sequence[str],
    isolate_methods: bool,
) -> list[Explanation]:
    """:meth:`~onnxcam.Explainer.explain_arrays` with ``aug_smooth``: each image's explanation of ``x`` (its class,
    scores, seed) with ``maps``, ``raw`` and ``attributions`` the means over :data:`AUGMENTATIONS` of the
    de-augmented ones, every copy explaining the unaugmented input's seed. ``details`` are the unaugmented run's; a
    clipped int8 score (``score_clip``) is the unaugmented input's, its warning names the averaged maps left blank."""
    from .methods.options import check_options

    checked = check_options(methods, metrics, options, x.shape[2:4])  # every key, the metrics' included
    args = (methods, layers, topk, eigen_smooth)
    options = _method_options(methods, options)  # the copies are explained without metrics
    results = explainer.explain_arrays(x, target, *args, seed, options, (), isolate_methods)
    seeds = np.stack([r.seed for r in results])
    runs = []
    for flip, factor in AUGMENTATIONS:
        copy = x if (flip, factor) == (False, 1.0) else augment(x, flip, factor)
        run = results if copy is x else explainer.explain_arrays(copy, None, *args, seeds, options, (), isolate_methods)
        runs.append((flip, run))
    for n, result in enumerate(results):
        copies = [(flip, run[n]) for flip, run in runs]
        stale = clip_warning(result.score_clip, result.maps)  # named the unaugmented blank maps
        for method in list(result.maps):
            failed = next((c.errors[method] for _, c in copies if method in c.errors), None)
            if failed is not None:  # isolate_methods: a method that failed on one copy failed
                result.errors[method] = failed
                for found in (result.maps, result.raw, result.attributions, result.details):
                    found.pop(method, None)
                continue
            result.maps[method] = _mean([deaugment(c.maps[method], f) for f, c in copies])
            if method in result.raw:
                layers_of = result.raw[method]
                result.raw[method] = {
                    layer: _mean([deaugment(c.raw[method][layer], f) for f, c in copies]) for layer in layers_of
                }
            if method in result.attributions:
                result.attributions[method] = _mean([deaugment(c.attributions[method], f) for f, c in copies])
        fresh = clip_warning(result.score_clip, result.maps)
        result.warnings = [w for w in result.warnings if w != stale] + ([fresh] if fresh else [])
    if metrics:
        from .metrics import evaluate_maps

        maps = {m: np.stack([r.maps[m] for r in results]) for m in results[0].maps} if results else {}
        scored = evaluate_maps(explainer, x, seeds, maps, metrics, checked, scores_kind=explainer.scores_kind)
        for result, values in zip(results, scored, strict=True):
            result.metrics = values
    return results


def _method_options(methods: Sequence[str], options: dict[str, Any] | None) -> dict[str, Any] | None:
    """The entries of ``options`` that ``methods`` read (the metrics' own keys left out)."""
    from .methods.base import get_method
    from .methods.options import method_options

    names = [methods] if isinstance(methods, str) else methods
    read = {o.name for m in names for o in method_options(get_method(m).name)}
    return {k: v for k, v in options.items() if k in read} if options else options


def _mean(values: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.float32(values), axis=0)

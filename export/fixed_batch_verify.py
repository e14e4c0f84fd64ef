"""Verification of an explainer graph kept at a fixed batch ``B`` (metadata ``onnxcam.fixed_batch``,
:mod:`.source_batch`): the finite-difference check runs on chunks of exactly ``B`` images, in sequence, until it has
seen as many images as a batch-dynamic graph is checked on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx

from .float64 import CouldNotVerify
from .source_batch import graph_batch
from .verify import Report, TieSuspected

#: Images a verification sees (a batch-dynamic graph is checked on one batch of this many).
IMAGES = 2
#: Chunks drawn beyond those needed when some settle for none of their images.
EXTRA_TRIES = 2
#: What :func:`.verify.verify_finite_differences` says when the differences settle for none of a call's images.
UNSETTLED = "settle at no step"

Verify = Callable[..., Report]


def verify_in_chunks(
    verify: Verify,
    explainer: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float,
) -> Report:
    """``verify(explainer, layers, input_shape, tolerance=…)`` (:func:`.verify.verify_finite_differences`,
    :func:`.quantization.verify_ste`) on batches of other random images (``seed`` 0, 1 …) until ``IMAGES`` images
    have measured: one batch, or for a graph at fixed batch ``B`` calls of ``B`` images each, their per-image errors
    joined in one :class:`Report`. A call that finds a wrong gradient raises there
    (:class:`.verify.VerificationError`). A call whose differences settle for none of its images (:data:`UNSETTLED`),
    or whose disagreement no node's local VJP explains (:class:`.verify.TieSuspected`: a kink crossed at that draw),
    is replaced by another; at most :data:`EXTRA_TRIES` times, then the last one is raised: a wrong graph disagrees
    at every draw. The report counts the images re-drawn."""
    fixed = graph_batch(explainer)
    per_call = {} if fixed is None else {"batch": fixed}
    needed = math.ceil(IMAGES / (fixed or IMAGES))
    reports: list[Report] = []
    redrawn = 0
    for seed in range(needed + EXTRA_TRIES):
        try:
            reports.append(verify(explainer, layers, input_shape, tolerance=tolerance, seed=seed, **per_call))
        except (CouldNotVerify, TieSuspected) as exc:
            retry = isinstance(exc, TieSuspected) or UNSETTLED in str(exc)
            if not retry or (seed + 1 == needed + EXTRA_TRIES and len(reports) < needed):
                raise
            redrawn += fixed or IMAGES
        if len(reports) == needed:
            break
    errors = {name: tuple(e for r in reports for e in r.errors[name]) for name in reports[0].errors}
    return Report(errors, redrawn + sum(r.redrawn for r in reports))

"""Verification of an explainer graph kept at a fixed batch ``B`` (metadata ``onnxcam.fixed_batch``,
:mod:`.source_batch`): the finite-difference check runs on chunks of exactly ``B`` images, in sequence, until it has
seen as many images as a batch-dynamic graph is checked on."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import onnx

from .source_batch import graph_batch
from .verify import Report

#: Images a verification sees (a batch-dynamic graph is checked on one batch of this many).
IMAGES = 2

Verify = Callable[..., Report]


def verify_in_chunks(
    verify: Verify,
    explainer: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float,
) -> Report:
    """``verify(explainer, layers, input_shape, tolerance=…)`` (:func:`.verify.verify_finite_differences`,
    :func:`.quantization.verify_ste`); for a graph at fixed batch ``B``, ``⌈2/B⌉`` calls of ``B`` images each (other
    random images per call: ``seed`` 0, 1 …), their per-image errors joined in one :class:`Report`. A call that finds
    a wrong gradient raises there (:class:`.verify.VerificationError`)."""
    fixed = graph_batch(explainer)
    if fixed is None:
        return verify(explainer, layers, input_shape, tolerance=tolerance)
    reports = [
        verify(explainer, layers, input_shape, tolerance=tolerance, batch=fixed, seed=k)
        for k in range(math.ceil(IMAGES / fixed))
    ]
    errors = {name: tuple(e for r in reports for e in r.errors[name]) for name in reports[0].errors}
    return Report(errors, sum(r.redrawn for r in reports))

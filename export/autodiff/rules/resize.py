"""VJP rule: ``Resize`` (nearest / linear / cubic, every coordinate transformation mode, antialias).

With constant scales (or sizes) and static resized dims, ``Resize`` is an affine map that acts on each axis
separately: ``y = x ×₁ R₁ ×₂ R₂ … + c``, where ``R_a`` [out, in] interpolates along axis ``a`` and ``c`` is the
``extrapolation_value`` that ``tf_crop_and_resize`` writes outside the roi. Hence ``x̄ = ḡ ×₁ R₁ᵀ ×₂ R₂ᵀ …``, one
``MatMul`` per resized axis (none where ``R_a = I``). Each ``R_a`` is built at export by running the op itself on an
identity basis along that axis, ``R_a = Resize(I) − Resize(0)``, in onnxruntime, which also runs the forward pass: every
attribute then means exactly what it means there, down to which pixel a rounded source coordinate picks
(``onnx.reference`` differs: it takes the left neighbour of a coordinate one ulp above an integer, as at output 8 of
7 → 17 pixels, where onnxruntime and torch take the integer's pixel).

Axes whose size is unknown at export (the batch) must be kept: a scale of 1, or, for ``sizes`` (computed at run time
by torch exports), they are taken as kept, as the batch and channels of an image model always are.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ... import large_protos
from ..context import VJPContext
from ..registry import rule

# Opset of the one-node graphs that build R: 19 knows every coordinate transformation mode (half_pixel_symmetric).
_MATRIX_OPSET = 19


def resize_matrix(
    attrs: dict[str, object], size: int, scale: float | None, out: int | None, roi: tuple[float, float]
) -> np.ndarray:
    """``R`` [out, size] of a Resize with attributes ``attrs`` along one axis of length ``size``: ``y = R·x + c``.

    The axis is resized by ``scale`` (float32, as the ``scales`` input) or to ``out`` (as ``sizes``); ``roi`` is its
    ``(start, end)`` for ``tf_crop_and_resize``. Computed by onnxruntime, which runs the forward op, on the probes
    ``[I; 0]`` laid along the last of 4 axes: ``R = Resize(I) − Resize(0)`` (float32, as its kernels compute).
    """
    attrs = {k: v for k, v in attrs.items() if k not in ("axes", "keep_aspect_ratio_policy")}
    probes = np.vstack([np.eye(size), np.zeros((1, size))]).astype(np.float32).reshape(size + 1, 1, 1, size)
    constants = {"roi": np.array([0, 0, 0, roi[0], 1, 1, 1, roi[1]], np.float32)}
    if out is None:
        constants["scales"] = np.array([1, 1, 1, scale], np.float32)
    else:
        constants["sizes"] = np.array([size + 1, 1, 1, out], np.int64)
    names = ["x", "roi", "scales" if out is None else "", "sizes" if out is not None else ""]
    graph = helper.make_graph(
        [helper.make_node("Resize", names, ["y"], **attrs)],
        "resize_matrix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, probes.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _MATRIX_OPSET)])
    session = large_protos.session(model, log_level=4)  # refusals are raised, not logged
    y = session.run(None, {"x": probes})[0].reshape(size + 1, -1).astype(np.float64)
    return (y[:size] - y[size]).T


def _targets(ctx: VJPContext, axes: list[int]) -> dict[int, tuple[float | None, int | str | None]]:
    """Per resized axis: ``(scale, None)`` (``scales`` form) or ``(None, out)`` with the output length."""
    x = ctx.input(0)
    scales = ctx.optional_constant(2)
    if ctx.input(2) and scales is None:
        ctx.fail(f"the scales input ('{ctx.input(2)}') must be a constant")
    if scales is not None and scales.size:
        return {a: (float(s), None) for a, s in zip(axes, scales.ravel(), strict=True)}
    sizes = ctx.optional_constant(3)
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
    if policy == "stretch":
        out_shape = ctx.shape(ctx.output())
        outs = [int(s) for s in sizes.ravel()] if sizes is not None else [out_shape[a] for a in axes]
        return {a: (None, m) for a, m in zip(axes, outs, strict=True)}
    # not_larger / not_smaller: one scale s = min / max of sizes ÷ dims for all axes, sizes round(s·n). A float32
    # ``scales`` input reproduces that only when s is exact in float32 and floor(s·n) = round(s·n).
    if sizes is None:
        ctx.fail(f"keep_aspect_ratio_policy={policy} needs a constant sizes input")
    dims = [ctx.shape(x)[a] for a in axes]
    if not all(isinstance(d, int) for d in dims):
        ctx.fail(f"keep_aspect_ratio_policy={policy} needs static dims {axes} of '{x}', got {ctx.shape(x)}")
    ratios = [int(m) / int(n) for m, n in zip(sizes.ravel(), dims, strict=True)]  # type: ignore[call-overload]
    scale = min(ratios) if policy == "not_larger" else max(ratios)
    if float(np.float32(scale)) != scale or any(int(scale * n) != int(scale * n + 0.5) for n in dims):  # type: ignore[operator]
        ctx.fail(f"keep_aspect_ratio_policy={policy}: the common scale {scale} has no exact scales-input equivalent")
    return dict.fromkeys(axes, (scale, None))


def _adjoint_along(ctx: VJPContext, grad: str, matrix: np.ndarray, axis: int, rank: int) -> str:
    """``ḡ ×_axis Rᵀ``: contract ``ḡ``'s ``axis`` (length out) with the rows of ``R`` [out, in]."""
    x = ctx.input(0)
    if axis == rank - 1:
        return ctx.emit("MatMul", grad, ctx.const(matrix, like=x))
    if axis == rank - 2:
        return ctx.emit("MatMul", ctx.const(matrix.T, like=x), grad)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = ctx.emit("MatMul", ctx.emit("Transpose", grad, perm=perm), ctx.const(matrix, like=x))
    return ctx.emit("Transpose", moved, perm=perm)


@rule("Resize")
def resize(ctx: VJPContext) -> list[str | None]:
    """``x̄ = ḡ ×₁ R₁ᵀ ×₂ R₂ᵀ …`` over the axes where ``R_a ≠ I``; roi, scales and sizes get no gradient."""
    x = ctx.input(0)
    shape = ctx.shape(x)
    rank = len(shape)
    axes = [int(a) % rank for a in ctx.attr("axes", range(rank))]  # type: ignore[call-overload]
    crop = ctx.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    roi = ctx.optional_constant(1) if crop else None
    if crop and roi is None:
        ctx.fail("tf_crop_and_resize needs a constant roi input")
    rois = (
        dict.fromkeys(axes, (0.0, 1.0))
        if roi is None
        else {a: (roi[i], roi[i + len(axes)]) for i, a in enumerate(axes)}
    )
    attrs = {a.name: helper.get_attribute_value(a) for a in ctx.node.attribute}
    grad = ctx.grad()
    for axis, (scale, out) in _targets(ctx, axes).items():
        size = shape[axis]
        if not isinstance(size, int):
            if scale is not None and (scale != 1.0 or rois[axis] != (0.0, 1.0)):
                ctx.fail(f"axis {axis} of '{x}' is resized but its size is unknown at export ({shape})")
            continue
        if scale is None and not isinstance(out, int):
            ctx.fail(f"the output size along axis {axis} is unknown at export ({ctx.shape(ctx.output())})")
        try:
            matrix = resize_matrix(attrs, size, scale, out, rois[axis])  # type: ignore[arg-type]
        except Exception as exc:  # onnxruntime refuses attribute combinations it cannot run (the forward too)
            ctx.fail(f"onnxruntime cannot evaluate it: {str(exc).strip().splitlines()[0]}")
        if matrix.shape != (size, size) or not np.array_equal(matrix, np.eye(size)):
            grad = _adjoint_along(ctx, grad, matrix, axis, rank)
    return [grad, *[None] * (len(ctx.inputs) - 1)]

"""int8 graphs: QDQ graphs are explained (straight-through estimator, :mod:`.autodiff.rules.quantize`) and verified
against an independent STE reference; QOperator graphs are refused in one line.

The reference for a QDQ explainer replaces every ``QuantizeLinear → DequantizeLinear`` pair ``y = DQ(Q(x))`` by

    ``y' = DQ(Q(x₀)) + c(x) − c(x₀)``,   ``c(x) = min(max(x, s·(q_min − z − ½)), s·(q_max − z + ½))``

with ``x₀`` the value at the evaluation point: ``y'`` equals the deployed value there and its derivative is that of
the clip-only float op ``c`` — 1 inside the quantization range, 0 where clipped: the STE of quantization-aware
training (Bengio et al. 2013; Jacob et al. 2018), written without ``Round`` (so no step of the differences crosses a
rounding boundary: a linear ``Resize`` or an average of quantized values lands exactly on halves of ``s``, where
``Round`` jumps). Central differences of the scores
through ``y'`` in float64 (``onnx.reference``) are compared with the explainer's ``gradient:<layer>`` evaluated in
float64 at the same point.

Quantized values tie inside max-pooling windows, where the gradient is a convention (the window's first maximum in
row-major order, as onnxruntime and torch route it), and a central difference straddles the tie. The reference breaks
the ties the same way: a ``MaxPool``/``GlobalMaxPool`` reading a ``DequantizeLinear`` (step ``s``) reads
``x − δ·(h·W + w)``, ``δ = min s / (2·H·W)``, instead: earlier positions win, distinct levels keep their order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference.op_run import OpRun

from onnxcam import contract

from .autodiff.graph_info import GraphInfo
from .errors import ExportError
from .float64 import cut_after, evaluate_float64
from .gating import reads
from .score_activation import MOVING
from .verify import (
    Objective,
    Report,
    VerificationError,
    check,
    directional_error,
    fast_kernels,
    finite_scale,
    objectives,
    run,
)

#: Ops of onnxruntime's QOperator format (and of dynamic quantization): integer kernels with no float tensor between.
_QOPERATOR = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeLinear", "MatMulIntegerToFloat", "QAttention"}


class QuantizedFormatError(ExportError):
    """An int8 graph in a format the explainer cannot differentiate (QOperator)."""


def refuse_qoperator(model: onnx.ModelProto) -> None:
    """Raise :class:`QuantizedFormatError` naming the first QOperator op (``QLinearConv``, ``QGemm``, …).

    Their integer tensors leave no float value to differentiate between layers; the QDQ format of the same
    quantization (``QuantizeLinear``/``DequantizeLinear`` around float ops, run as integer kernels by onnxruntime) is
    differentiated with the straight-through estimator.
    """
    for node in model.graph.node:
        if node.op_type.startswith(("QLinear", "QOrdered")) or node.op_type in _QOPERATOR:
            raise QuantizedFormatError(
                f"int8 QOperator graph (op {node.op_type} at node '{node.name or node.output[0]}') cannot be "
                "differentiated; re-quantize it in QDQ format: quantize_static(..., quant_format=QuantFormat.QDQ)"
            )


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether ``model`` holds a ``QuantizeLinear`` (its backward then uses the straight-through estimator)."""
    return any(node.op_type == "QuantizeLinear" for node in model.graph.node)


class QuantizeLinear(OpRun):
    """``QuantizeLinear`` in numpy for any float input type and opset (per-tensor or per-axis; round half to even,
    saturate to the zero point's integer type, uint8 without one)."""

    op_domain = ""

    def _run(  # type: ignore[override]
        self, x, scale, zero_point=None, axis=None, block_size=None, output_dtype=None, precision=None, saturate=None
    ):
        dtype = np.uint8 if zero_point is None else zero_point.dtype
        zero = 0 if zero_point is None else _broadcast(zero_point, x.ndim, axis)
        level = np.rint(x / _broadcast(scale, x.ndim, axis)) + zero
        limits = np.iinfo(dtype)
        return (np.clip(level, limits.min, limits.max).astype(dtype),)


class DequantizeLinear(OpRun):
    """``DequantizeLinear`` in numpy: ``(q − z) · s`` in the scale's float type (per-tensor or per-axis)."""

    op_domain = ""

    def _run(self, q, scale, zero_point=None, axis=None, block_size=None, output_dtype=None):  # type: ignore[override]
        zero = 0 if zero_point is None else _broadcast(zero_point, q.ndim, axis).astype(np.int64)
        return (((q.astype(np.int64) - zero) * _broadcast(scale, q.ndim, axis)).astype(scale.dtype),)


def _broadcast(values: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A per-axis 1-D ``scale``/``zero_point`` shaped to broadcast along ``axis`` (default 1); scalars as they are."""
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * rank
    shape[(1 if axis is None else axis) % rank] = -1
    return values.reshape(shape)


def ste_surrogate(after: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Copy of ``after`` whose ``QuantizeLinear → DequantizeLinear`` outputs ``y`` are ``y₀ + c(x) − c(x₀)`` (module
    docstring); returns it and ``{anchor input: tensor}``, the inputs to feed with the tensors' values ``x₀``, ``y₀``
    at the evaluation point."""
    model = onnx.ModelProto()
    model.CopyFrom(after)
    graph = model.graph
    info = GraphInfo(after)
    quantizers = {n.output[0]: n for n in graph.node if n.op_type == "QuantizeLinear"}
    anchors: dict[str, str] = {}
    added: list[onnx.NodeProto] = []
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in quantizers:
            kept.append(node)
            continue
        q = quantizers[node.input[0]]
        x, y = q.input[0], node.output[0]
        lo, hi = _clip_range(q, info)
        anchor, deployed = f"anchor/{x}", f"anchor/{y}"
        anchors.update({anchor: x, deployed: y})
        p = f"ste/{y}/"
        graph.initializer.extend([numpy_helper.from_array(lo, p + "lo"), numpy_helper.from_array(hi, p + "hi")])
        for source, clipped in [(x, p + "c"), (anchor, p + "c0")]:
            added.append(helper.make_node("Max", [source, p + "lo"], [clipped + "/low"]))
            added.append(helper.make_node("Min", [clipped + "/low", p + "hi"], [clipped]))
        added.append(helper.make_node("Sub", [p + "c", p + "c0"], [p + "delta"]))
        added.append(helper.make_node("Add", [deployed, p + "delta"], [y]))
    graph.input.extend(helper.make_tensor_value_info(a, TensorProto.UNDEFINED, None) for a in anchors)
    nodes = _toposort([*kept, *added], {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(nodes)
    return model, anchors


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` in an order where every tensor (subgraphs' included) is produced before it is read (Kahn)."""
    done = set(available)
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(not i or i in done for i in reads(n))]
        if not ready:
            raise ExportError(f"STE reference: cannot order node '{pending[0].name or pending[0].output[0]}'")
        for n in ready:
            ordered.append(n)
            done.update(n.output)
        pending = [n for n in pending if n not in ready]
    return ordered


def _scale_and_zero(q: onnx.NodeProto, info: GraphInfo) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A ``QuantizeLinear``'s constant ``scale`` and ``zero_point`` (uint8 0 when absent; ``None``: not constant)."""
    zero = info.constant(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
    return info.constant(q.input[1]), zero


def _clip_range(q: onnx.NodeProto, info: GraphInfo) -> tuple[np.ndarray, np.ndarray]:
    """``s·(q_min − z − ½)`` and ``s·(q_max − z + ½)``: where ``round(x/s) + z`` stays inside the integer range."""
    scale, zero = _scale_and_zero(q, info)
    if scale is None:
        raise ExportError(f"QuantizeLinear '{q.name or q.output[0]}': its scale is not a constant")
    limits = np.iinfo(np.uint8 if zero is None else zero.dtype)
    rank = len(info.shape(q.input[0]) or ())
    axis = next((a.i for a in q.attribute if a.name == "axis"), 1)
    s = _broadcast(scale.astype(np.float64), rank, axis)
    z = 0.0 if zero is None else _broadcast(zero.astype(np.float64), rank, axis)
    return (s * (limits.min - z - 0.5)).astype(scale.dtype), (s * (limits.max - z + 0.5)).astype(scale.dtype)


def score_limits(model: onnx.ModelProto, scores: str) -> tuple[float, float] | None:
    """``(lo, hi)`` when ``scores`` is the dequantized output of a per-tensor ``QuantizeLinear`` (through the ops that
    only move values, :data:`.score_activation.MOVING`), else ``None``: the deployed scores then lie in
    ``[(q_min − z)·s, (q_max − z)·s]``, and a score clipped at either end has gradient 0 under the straight-through
    estimator (its gradient maps are blank)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    while (node := producers.get(scores)) is not None and node.op_type in MOVING:
        scores = node.input[0]
    q = producers.get(node.input[0]) if node is not None and node.op_type == "DequantizeLinear" else None
    if q is None or q.op_type != "QuantizeLinear":
        return None
    scale, zero = _scale_and_zero(q, GraphInfo(model))
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    limits = np.iinfo(zero.dtype)
    s, z = float(scale.ravel()[0]), float(zero.ravel()[0])
    return s * (limits.min - z), s * (limits.max - z)


#: Pooling ops whose ties :func:`break_ties` resolves (their windows lie in one (n, c) plane, scanned row-major).
_BROKEN_TIES = ("MaxPool", "GlobalMaxPool")


def break_ties(forward: onnx.ModelProto, whole: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``forward`` whose max pools reading a dequantized tensor ``x`` of static ``H×W`` read
    ``x − δ·(h·W + w)`` (``δ = min s / (2·H·W)``, ``s`` the ``DequantizeLinear`` scale): a strict order among tied
    values that makes the window's first (row-major) maximum the maximum, and keeps distinct levels (``≥ s`` apart)
    in order. ``whole``: the graph ``forward`` was cut from (its producers, shapes and constants)."""
    model = onnx.ModelProto()
    model.CopyFrom(forward)
    graph = model.graph
    info = GraphInfo(whole)
    producers = {o: n for n in whole.graph.node for o in n.output}
    added = []
    for node in graph.node:
        source = producers.get(node.input[0])
        shape = info.shape(node.input[0]) or ()
        if node.op_type not in _BROKEN_TIES or source is None or source.op_type != "DequantizeLinear":
            continue
        scale = info.constant(source.input[1])
        if scale is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
            continue
        h, w = shape[2], shape[3]
        ramp = np.arange(h * w, dtype=np.float64).reshape(h, w) * float(np.min(scale)) / (2 * h * w)
        offset, broken = f"ties/{node.input[0]}/ramp", f"{node.input[0]}/ties_broken"
        graph.initializer.append(numpy_helper.from_array(ramp.astype(scale.dtype), offset))
        added.append(helper.make_node("Sub", [node.input[0], offset], [broken]))
        node.input[0] = broken
    nodes = _toposort([*graph.node, *added], {i.name for i in graph.input} | {t.name for t in graph.initializer})
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def verify_ste(
    explainer: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float = 1e-4,
    batch: int = 2,
    directions: int = 2,
    seed: int = 0,
) -> Report:
    """Directional central differences of ``scores[n, t_n]`` through :func:`ste_surrogate` (float64) vs
    ``⟨gradient:<layer>, v⟩`` (and ``gradient:input`` when exported) of the explainer evaluated in float64 at the
    same point (the layer's map ``A`` from
    onnxruntime; the rest of the graph's inputs frozen at their onnxruntime values). ``ε``: :func:`_step`.
    Error of image ``n``: ``|fd_n − dot_n| / max_m |dot_m|``,
    worst over directions; raises :class:`~.verify.VerificationError` above ``tolerance`` (median image), naming the
    first float node whose local VJP disagrees as the float verifier does (:func:`~.localize.first_wrong_node`).
    Ties in max pools after the layer are broken by the first-maximum convention (:func:`break_ties`). A graph with a
    unit layer is checked again with a random unit seed per image, a detector or dense output with a random seed over
    its scores (:func:`~.verify.objectives`).
    """
    from .localize import first_wrong_node

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.array([contract.TOP1, 0, 1][:batch], np.int64)
    kernels = [QuantizeLinear, DequantizeLinear, *fast_kernels()]
    errors: dict[str, tuple[float, ...]] = {}
    sources: dict[str, tuple[str, dict[str, np.ndarray], Objective]] = {}
    pairs = [(contract.activation_name(layer), contract.gradient_name(layer)) for layer in layers]
    if contract.INPUT_GRADIENT in {o.name for o in explainer.graph.output}:
        pairs.append((contract.INPUT, contract.INPUT_GRADIENT))
    info = GraphInfo(explainer)
    for objective in objectives(explainer):
        seeds = {k: v.astype(np.float32) for k, v in objective.draw(explainer, batch, rng).items()}
        feeds = {contract.INPUT: x, contract.TARGET: target, **seeds}
        for tap, grad in pairs:
            after, frozen = cut_after(explainer, tap, [*objective.reads, grad], objective.fed)
            probe = onnx.ModelProto()
            probe.CopyFrom(explainer)
            probe.graph.output.extend(
                helper.make_tensor_value_info(f, helper.np_dtype_to_tensor_dtype(info.dtype(f)), info.shape(f))
                for f in frozen
                if f not in feeds
            )
            out = {**run(probe, feeds), **feeds}
            fixed = {f: out[f] for f in frozen}
            activation = out[tap].astype(np.float64)
            at = evaluate_float64(after, {tap: activation, **fixed}, kernels)
            reads = [r for r in objective.reads if r != contract.TARGET_USED]
            forward = break_ties(cut_after(explainer, tap, reads, objective.fed)[0], explainer)
            fixed = {i.name: fixed[i.name] for i in forward.graph.input if i.name in fixed}
            surrogate, anchors = ste_surrogate(forward)
            base_model = onnx.ModelProto()
            base_model.CopyFrom(forward)
            base_model.graph.output.extend(
                helper.make_tensor_value_info(v, TensorProto.UNDEFINED, None) for v in set(anchors.values())
            )
            base = evaluate_float64(base_model, {tap: activation, **fixed}, kernels)
            anchored = {a: base[v] for a, v in anchors.items()}
            values = {**out, **at}
            worst = np.zeros(batch)
            size = max(float(np.abs(activation).max()), 1e-6)
            level = float(objective.rounding(values, values, feeds).max())
            for _ in range(directions):
                v = rng.standard_normal(activation.shape)
                dot = (at[grad] * v).reshape(batch, -1).sum(1)
                eps = _step(size, level, finite_scale(dot), tolerance)
                f_plus, f_minus = (
                    objective(
                        evaluate_float64(surrogate, {tap: activation + sign * eps * v, **fixed, **anchored}, kernels),
                        values,
                        feeds,
                    )
                    for sign in (1, -1)
                )
                fd = (f_plus - f_minus) / (2 * eps)
                worst = np.maximum(worst, np.nan_to_num(directional_error(fd, dot), nan=np.inf))
            name = grad + objective.suffix
            errors[name] = tuple(worst.tolist())
            sources[name] = (tap, feeds, objective)
            _refuse_ties(Report({name: errors[name]}), tolerance, tap, forward)

    def where(name: str) -> str:
        tap, feeds, objective = sources[name]
        return first_wrong_node(explainer, tap, feeds, kernels, end=objective.end)

    return check(Report(errors), tolerance, where)


def _step(size: float, level: float, slope: float, tolerance: float) -> float:
    """Central-difference step along a standard-normal direction: 1e-10 of the map's scale ``size`` (far from every
    clip boundary), raised where the float64 rounding of an objective of magnitude ``level`` (≈ ``10·u·level/ε``,
    ``u`` = float64 epsilon) would exceed ``tolerance/8`` of the slope's scale (a detector's box coordinates are
    hundreds of pixels), at most 1e-6 of ``size``."""
    floor = 80 * np.finfo(np.float64).eps * level / (tolerance * max(slope, 1e-30))
    return min(max(1e-10 * size, floor), 1e-6 * size)


#: Ops whose gradient at tied inputs is a convention (the first maximum); quantized values tie often.
_TIE_OPS = ("MaxPool", "GlobalMaxPool", "ReduceMax", "Max")


def _refuse_ties(report: Report, tolerance: float, tap: str, forward: onnx.ModelProto) -> None:
    """Above tolerance with a max-type op after ``tap`` whose ties are not broken (:func:`break_ties`): say so (ties
    among quantized values, not a wrong rule)."""
    ties = next(
        (n for n in forward.graph.node if n.op_type in _TIE_OPS and not n.input[0].endswith("/ties_broken")), None
    )
    if report.typical > tolerance and ties is not None:
        raise VerificationError(
            f"cannot verify '{tap}' of an int8 graph: {ties.op_type} '{ties.name or ties.output[0]}' after it sees "
            f"ties among quantized values, where the gradient is a convention (the first maximum) that finite "
            f"differences cannot check ({report.summary()}); explain a layer after it, or export with --no-verify"
        )

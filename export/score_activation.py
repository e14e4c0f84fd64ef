"""The activation (softmax, log-softmax, sigmoid) under a forward graph's ``scores``, seen through the ops that only
move or select values, and the tail of such ops to re-apply to the logits before it.

Seen through (the *tail*): ``Identity``, float ``Cast``, ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``,
``Transpose``, ``Slice``, ``Gather``, ``GatherND`` (dynamo's indexing); int8 ``QuantizeLinear → DequantizeLinear``
pairs (dropped: they round the probabilities, not the logits); a ``Log`` over a softmax (``log softmax``).
Recognised as the activation: the ops ``Softmax``/``LogSoftmax``/``Sigmoid``, the decomposed softmax
``Exp(x [− m]) / ReduceSum(Exp(…), class axis)`` (``m`` constant along the class axis, e.g. ``ReduceMax(x)``; ``Mul``
by a ``Reciprocal`` too) and the decomposed sigmoid ``1 / (1 + Exp(−x))`` (``Div`` or ``Reciprocal``); the logits
are ``x``.

The tail commutes with an element-wise sigmoid. A softmax's axis is followed through the tail and must become the
output's class axis (1), whole: a softmax over all classes whose output keeps a subset (``Slice``/``Gather`` of some
classes) gives probabilities its kept logits cannot reproduce, and is refused, as is an activation whose output a
value-changing op (``Mul`` by a temperature, ``Resize``, …) reaches the scores through: :class:`Refusal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxcam import contract

from .autodiff.graph_info import Dim, GraphInfo

#: Ops that only move or select values (their first input is the data); re-applied to the logits.
MOVING = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Slice", "Gather", "GatherND")
#: Element-wise, reducing, joining and selecting ops through which a refused activation is looked for.
_CHANGING = (
    "Mul", "Div", "Add", "Sub", "Pow", "Log", "Exp", "Clip", "Neg", "Abs", "Sqrt", "Reciprocal", "Max", "Min",
    "Relu", "Resize", "ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
    "Cast", "QuantizeLinear", "DequantizeLinear", "Concat", "TopK", "Sum", "Mean", *MOVING,
)  # fmt: skip
_SOFTMAXES = ("Softmax", "LogSoftmax")


@dataclass(frozen=True)
class Activation:
    """``op``: ``Softmax``, ``LogSoftmax`` or ``Sigmoid``; ``logits``: the tensor before it; ``name``: its node (the
    final node of a decomposed one); ``form``: how a decomposed one is written (``""`` for the op); ``tail``: the
    nodes to apply to ``logits``, in order, for tensors laid out as the output."""

    op: str
    logits: str
    name: str
    form: str = ""
    tail: tuple[onnx.NodeProto, ...] = ()


@dataclass(frozen=True)
class Refusal:
    """Why the output's kind cannot be detected exactly (one line, naming the node and the way out)."""

    message: str


class _Untracked(Exception):
    """The softmax axis cannot be followed through a node (the reason in words)."""


def find_activation(model: onnx.ModelProto, name: str = contract.SCORES) -> Activation | Refusal | None:
    """The :class:`Activation` producing ``name`` through the moving ops, a :class:`Refusal`, or ``None`` (no
    activation: the output is taken as it is)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    lazy: list[GraphInfo] = []

    def info() -> GraphInfo:
        if not lazy:
            lazy.append(GraphInfo(model))
        return lazy[0]

    tail: list[onnx.NodeProto] = []
    log: onnx.NodeProto | None = None
    while (node := producers.get(name)) is not None:
        if node.op_type in MOVING or (node.op_type == "Cast" and info().dtype(node.output[0]).kind == "f"):
            tail.append(node)
        elif (source := _dequantized(node, producers)) is not None:
            name = source
            continue
        elif node.op_type == "Log" and log is None:
            log = node
        else:
            break
        name = node.input[0]
    try:
        found = _activation(node, producers, info) if node is not None else None
    except _Untracked as why:
        return Refusal(
            f"scores: the output comes from the {node.op_type} '{_named(node)}', but {why}: its kind cannot be told; "
            "declare --scores probabilities or --scores raw (explains the output as it is)"
        )
    if found is None:
        changed = log or node
        return _refusal_after(changed, producers, info) if changed is not None else None
    op, logits, axis, form = found
    if log is not None and op != "Softmax":
        return Refusal(
            f"scores: the model's output is the Log '{_named(log)}' of the {op} '{_named(node)}': no kind fits "
            "(log-sigmoid, log of log-probabilities); declare --scores raw (explains the output as it is)"
        )
    if log is not None:
        op, form = "LogSoftmax", f"Log({form or 'Softmax'})"
    tail.reverse()
    if axis is not None and (refused := _class_axis_refusal(op, node, tail, axis, info())) is not None:
        return refused
    return Activation(op, logits, _named(node), form, tuple(tail))


def reapply(graph: onnx.GraphProto, tail: tuple[onnx.NodeProto, ...], tensor: str) -> str:
    """Append copies of ``tail`` (an :attr:`Activation.tail`) reading ``tensor`` to ``graph``; the last one's output
    (``tensor`` for an empty tail).

    A dequantized ``tensor`` (int8) passes a ``Flatten → Reshape`` to its own shape first: onnxruntime's
    ``QDQPropagationTransformer`` carries a ``DequantizeLinear`` forward through the moving ops after it and aborts the
    process (onnxruntime 1.32, an out-of-range input index) where one of their outputs is read inside an ``If`` branch,
    as the gated backward reads them; it does not pass a ``Flatten``."""
    if tail and any(n.op_type == "DequantizeLinear" and tensor in n.output for n in graph.node):
        shape, flat, unflat = (f"onnxcam/scores_tail/{part}" for part in ("shape", "flat", "unflat"))
        graph.node.extend(
            [
                helper.make_node("Shape", [tensor], [shape], name=shape),
                helper.make_node("Flatten", [tensor], [flat], name=flat, axis=1),
                helper.make_node("Reshape", [flat, shape], [unflat], name=unflat),
            ]
        )
        tensor = unflat
    for i, node in enumerate(tail):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"onnxcam/scores_tail/{i}"
        copy.input[0], copy.output[0] = tensor, f"onnxcam/scores_tail/{i}"
        graph.node.append(copy)
        tensor = copy.output[0]
    return tensor


def _named(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _dequantized(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The input of the ``QuantizeLinear`` a ``DequantizeLinear`` ``node`` reads, else ``None``."""
    source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
    return source.input[0] if source is not None and source.op_type == "QuantizeLinear" else None


def _through_qdq(name: str, producers: dict[str, onnx.NodeProto]) -> onnx.NodeProto | None:
    """The producer of ``name`` behind ``Identity`` nodes and int8 ``QuantizeLinear → DequantizeLinear`` pairs."""
    while (node := producers.get(name)) is not None:
        source = node.input[0] if node.op_type == "Identity" else _dequantized(node, producers)
        if source is None:
            return node
        name = source
    return None


def _activation(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], info: Callable[[], GraphInfo]
) -> tuple[str, str, int | None, str] | None:
    """``(op, logits, softmax axis or None, form)`` when ``node`` is an activation, written out or not."""
    if node.op_type in _SOFTMAXES:
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
        return node.op_type, node.input[0], _axis(axis, node.input[0], info()), ""
    if node.op_type == "Sigmoid":
        return "Sigmoid", node.input[0], None, ""
    return _decomposed_softmax(node, producers, info) or _decomposed_sigmoid(node, producers, info)


def _axis(axis: int, name: str, info: GraphInfo) -> int:
    shape = info.shape(name)
    if shape is None:
        raise _Untracked(f"the rank of '{name}' is unknown")
    return axis % len(shape)


def _quotient(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> tuple[str, str] | None:
    """``(a, b)`` when ``node`` computes ``a / b`` (``Div``, or ``Mul`` by a ``Reciprocal``)."""
    if node.op_type == "Div":
        return node.input[0], node.input[1]
    if node.op_type == "Mul":
        for a, b in (node.input, reversed(node.input)):
            if (r := _through_qdq(b, producers)) is not None and r.op_type == "Reciprocal":
                return a, r.input[0]
    return None


def _decomposed_softmax(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], info: Callable[[], GraphInfo]
) -> tuple[str, str, int | None, str] | None:
    """``Exp(u) / ReduceSum(Exp(u), [a], keepdims=1)``, ``u = x − m`` (``m`` of size 1 along ``a``) or ``u = x``."""
    parts = _quotient(node, producers)
    if parts is None:
        return None
    exp, total = (_through_qdq(p, producers) for p in parts)
    if exp is None or total is None or exp.op_type != "Exp" or total.op_type != "ReduceSum":
        return None
    if _through_qdq(total.input[0], producers) is not exp:
        return None
    axes = info().constant(total.input[1]) if len(total.input) > 1 and total.input[1] else None
    keep = next((helper.get_attribute_value(a) for a in total.attribute if a.name == "keepdims"), 1)
    if axes is None or axes.size != 1 or not keep:
        return None
    u = exp.input[0]
    axis = _axis(int(axes.ravel()[0]), u, info())
    form = "Exp/ReduceSum/Div"
    shift = _through_qdq(u, producers)
    if shift is not None and shift.op_type == "Sub":
        m = info().shape(shift.input[1])
        rank = len(info().shape(u) or ())
        if m is not None and (len(m) < rank - axis or (len(m) == rank and m[axis] == 1)):
            return "Softmax", shift.input[0], axis, "Exp(x − m)/ReduceSum/Div"
    return "Softmax", u, axis, form


def _is_one(name: str, info: GraphInfo) -> bool:
    value = info.constant(name)
    return value is not None and value.size >= 1 and bool(np.all(value == 1))


def _negated(name: str, producers: dict[str, onnx.NodeProto], info: GraphInfo) -> str | None:
    """``x`` when ``name`` is ``Neg(x)`` or ``x · (−1)``."""
    node = _through_qdq(name, producers)
    if node is not None and node.op_type == "Neg":
        return node.input[0]
    if node is not None and node.op_type == "Mul":
        for a, b in (node.input, reversed(node.input)):
            c = info.constant(b)
            if c is not None and c.size >= 1 and bool(np.all(c == -1)):
                return a
    return None


def _decomposed_sigmoid(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], info: Callable[[], GraphInfo]
) -> tuple[str, str, int | None, str] | None:
    """``1 / (1 + Exp(−x))``: ``Div(1, ·)`` or ``Reciprocal``."""
    if node.op_type == "Reciprocal":
        denominator = node.input[0]
    elif node.op_type == "Div" and _is_one(node.input[0], info()):
        denominator = node.input[1]
    else:
        return None
    add = _through_qdq(denominator, producers)
    if add is None or add.op_type != "Add":
        return None
    for one, e in (add.input, reversed(add.input)):
        exp = _through_qdq(e, producers)
        if _is_one(one, info()) and exp is not None and exp.op_type == "Exp":
            x = _negated(exp.input[0], producers, info())
            if x is not None:
                return "Sigmoid", x, None, "1/(1+Exp(−x))"
    return None


def _refusal_after(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], info: Callable[[], GraphInfo]
) -> Refusal | None:
    """A :class:`Refusal` naming ``node`` when an activation reaches it through element-wise, reducing, joining or
    selecting ops (a temperature, a resize of probabilities, an average of two softmaxes, a ``Concat`` of sigmoid
    heads, ``TopK`` of probabilities), searched back along their inputs that are not constants; else ``None`` (the
    search stops at every other op: a ``Gemm``/``Conv`` computes logits)."""
    pending, seen = [node], set()
    while pending and len(seen) < 64:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        try:
            found = _activation(current, producers, info) if current is not node else None
            op = found[0] if found is not None else None
        except _Untracked:
            op = current.op_type
        if op is not None:
            return Refusal(
                f"scores: the model's output comes from the {op} '{_named(current)}' through the "
                f"{node.op_type} '{_named(node)}', which changes or mixes its values: no kind fits exactly; declare "
                "--scores probabilities (if they still are) or --scores raw (explains the output as it is)"
            )
        if current.op_type not in _CHANGING:
            continue
        data = current.input[: 1 if current.op_type in MOVING else None]
        pending += [producers[i] for i in data if i and not _fixed(i, info) and i in producers]
    return None


def _fixed(name: str, info: Callable[[], GraphInfo]) -> bool:
    return info().constant(name) is not None


def _class_axis_refusal(
    op: str, node: onnx.NodeProto, tail: list[onnx.NodeProto], axis: int, info: GraphInfo
) -> Refusal | None:
    """A :class:`Refusal` unless the softmax ``axis`` becomes axis 1 of the output, whole, through ``tail``."""
    at = node
    try:
        for at in tail:
            axis = _axis_after(at, axis, info)
        if axis != 1:
            raise _Untracked(f"it is axis {axis} of the output, not the class axis 1")
    except _Untracked as why:
        where = f", at the {at.op_type} '{_named(at)}'" if at is not node else ""
        return Refusal(
            f"scores: the output does not hold the classes of the {op} '{_named(node)}' whole ({why}{where}): the "
            "logits before it cannot reproduce the output's probabilities; declare --scores probabilities (explains "
            "them as they are) or give the logits with --scores-from, if the model outputs them"
        )
    return None


def _ints(node: onnx.NodeProto, i: int, info: GraphInfo) -> list[int] | None:
    """Constant input ``i`` of ``node`` as ints (``None`` when absent); :class:`_Untracked` when not constant."""
    if len(node.input) <= i or not node.input[i]:
        return None
    value = info.constant(node.input[i])
    if value is None:
        raise _Untracked(f"input '{node.input[i]}' is not constant")
    return [int(v) for v in value.ravel()]


def _shape(name: str, info: GraphInfo) -> tuple[Dim, ...]:
    shape = info.shape(name)
    if shape is None:
        raise _Untracked(f"the shape of '{name}' is unknown")
    return shape


def _axis_after(node: onnx.NodeProto, axis: int, info: GraphInfo) -> int:
    """Where axis ``axis`` of ``node``'s data input lies in its output; :class:`_Untracked` when the node mixes it
    with another axis or keeps only some of its entries."""
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    rank = len(_shape(node.input[0], info))
    if op in ("Identity", "Cast"):
        return axis
    if op == "Transpose":
        return list(attrs.get("perm", range(rank - 1, -1, -1))).index(axis)
    if op == "Unsqueeze":
        new = _ints(node, 1, info) or []
        added = {a % (rank + len(new)) for a in new}
        return [i for i in range(rank + len(new)) if i not in added][axis]
    if op == "Squeeze":
        shape = _shape(node.input[0], info)
        removed = _ints(node, 1, info)
        gone = {a % rank for a in removed} if removed is not None else {i for i, d in enumerate(shape) if d == 1}
        if axis in gone:
            raise _Untracked("the Squeeze removes it")
        return axis - sum(a < axis for a in gone)
    if op in ("Reshape", "Flatten"):
        return _reshaped(_shape(node.input[0], info), _shape(node.output[0], info), axis)
    size = _shape(node.input[0], info)[axis]
    if op == "Slice":
        starts, ends = _ints(node, 1, info) or [], _ints(node, 2, info) or []
        axes = _ints(node, 3, info) or list(range(len(starts)))
        steps = _ints(node, 4, info) or [1] * len(starts)
        for a, start, end, step in zip(axes, starts, ends, steps, strict=True):
            if a % rank == axis and not _whole(size, start, end, step):
                kept = range(size)[slice(start, end, step)] if isinstance(size, int) else None
                which = f"{len(kept)} of its {size} classes ({kept[0]}…{kept[-1]})" if kept else "part of its classes"
                raise _Untracked(f"it keeps {which}")
        return axis
    if op == "Gather":
        at = attrs.get("axis", 0) % rank
        if at != axis:
            return axis if axis < at else axis + len(_shape(node.input[1], info)) - 1
        _permutes(info.constant(node.input[1]), size)
        return axis
    if op == "GatherND":  # out = data[:b] + indices[b:-1] + data[b+m:]
        indices, b = _shape(node.input[1], info), attrs.get("batch_dims", 0)
        m = indices[-1]
        if axis < b:
            return axis
        if not isinstance(m, int):
            raise _Untracked("the GatherND's index depth is unknown")
        if axis >= b + m:
            return axis - m + len(indices) - 1
        value = info.constant(node.input[1])
        if b or m != 1 or len(indices) != 2:
            raise _Untracked("the GatherND picks entries along it together with other axes")
        _permutes(value[:, 0] if value is not None else None, size)
        return 0
    raise _Untracked(f"{op} is not a moving op")


def _permutes(indices: np.ndarray | None, size: Dim) -> None:
    """:class:`_Untracked` unless ``indices`` is a constant 1-D reordering of all ``size`` classes."""
    if not isinstance(size, int) or indices is None or indices.ndim != 1:
        raise _Untracked("it gathers classes by indices not known before the run")
    if sorted(int(v) % size for v in indices) != list(range(size)):
        raise _Untracked(f"it gathers {indices.size} of {size} classes")


def _whole(size: Dim, start: int, end: int, step: int) -> bool:
    """Whether ``[start:end:step]`` of a ``size``-long axis keeps every entry (forwards or reversed)."""
    if not isinstance(size, int):
        return False
    return abs(step) == 1 and len(range(size)[slice(start, end, step)]) == size


def _reshaped(before: tuple[Dim, ...], after: tuple[Dim, ...], axis: int) -> int:
    """The axis of ``after`` that holds axis ``axis`` of ``before`` whole: the same static size and the same number
    of elements after it (the trailing dims are static where the batch is not); :class:`_Untracked` otherwise."""
    size = before[axis]
    want = _count(before[axis + 1 :])
    for j, d in enumerate(after):
        if isinstance(size, int) and d == size and want is not None and _count(after[j + 1 :]) == want:
            return j
    raise _Untracked(f"the reshape {list(before)} → {list(after)} mixes it with other axes")


def _count(dims: tuple[Dim, ...]) -> int | None:
    """The number of elements of static ``dims`` (``None`` when one is not static)."""
    return int(np.prod(dims, dtype=np.int64)) if all(isinstance(d, int) for d in dims) else None

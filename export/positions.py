"""Where in the image each element of a forward graph's tensors stands: positions traced from the input.

Every element gets a *position*, the centre ``(y, x)`` in ``[0, 1]²`` of the image region it stands for, held as the
complex number ``y + 1j·x`` in an array of the tensor's shape (NaN: unknown, or none, as a class token's). The input
``[N, C, H, W]`` holds its pixel centres; each node maps its inputs' positions to its outputs':

- data movement (Reshape, Transpose, Slice, Concat, Gather, Split, …) moves them as it moves the values (the node
  itself runs on them: ``onnx.reference``);
- elementwise ops and normalisations keep them (several full-size inputs: where they agree, else unknown; a
  broadcast operand such as a squeeze-excitation gate or a LayerNorm's mean does not count);
- reductions and a MatMul/Gemm contracting a weight take the mean over what they combine (a pooling of neighbours,
  Swin's patch merging: the merged cell's centre); a MatMul of two traced tensors keeps the side whose positions are
  constant along the contracted axis (attention maps query token ``i`` to output token ``i``);
- Conv and pooling windows take the position of the window's centre;
- any other op gives unknown positions.

Unknown is never a position: a caller decides only from the positions it knows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnxcam import contract

from . import large_protos


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


#: Ops run on the positions themselves, with the indices of their inputs that hold data (the rest: shapes, indices;
#: ``None``: all).
MOVES: dict[str, tuple[int, ...] | None] = {
    **dict.fromkeys(
        _ops(
            "Reshape Transpose Slice Gather GatherElements GatherND Flatten Squeeze Unsqueeze "
            "Split Expand Tile Identity DepthToSpace SpaceToDepth Pad Resize"
        ),
        (0,),
    ),
    "Concat": None,  # all
    "ScatterND": (0, 2),
    "ScatterElements": (0, 2),
}
#: Ops whose output element ``i`` is computed from input elements ``i`` (broadcast) and per-token statistics.
ELEMENTWISE = _ops(
    "Add Sub Mul Div Pow Max Min Sum Mean Mod Relu LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Tanh Erf Exp "
    "Log Sqrt Reciprocal Neg Abs Clip Cast CastLike Dropout Softmax LogSoftmax Gelu Mish Softplus Softsign "
    "Elu Selu Celu ThresholdedRelu Where Floor Ceil Round Sign Sin Cos BatchNormalization "
    "InstanceNormalization LayerNormalization GroupNormalization LpNormalization MeanVarianceNormalization"
)
REDUCES = _ops("ReduceMean ReduceMax ReduceMin ReduceSum ReduceL1 ReduceL2 ReduceProd ReduceLogSumExp ReduceSumSquare")
WINDOWS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
#: Name of the padding value fed to Pad (padding stands nowhere).
PAD = "positions/pad"
#: Two positions closer than this are the same.
SAME = 1e-9


def trace(model: onnx.ModelProto, targets: Sequence[str], image: np.ndarray) -> tuple[dict[str, np.ndarray], list]:
    """The positions of every float tensor the ``targets`` of ``model`` (input ``contract.INPUT``, NCHW) depend on,
    on the float ``image`` ``[N, C, H, W]``, and the nodes that computed them, in graph order."""
    nodes = ancestors(model, targets)
    values = _values(model, nodes, image)
    opsets = list(model.opset_import)
    height, width = image.shape[2:]
    ys = (np.arange(height) + 0.5) / height
    xs = (np.arange(width) + 0.5) / width
    places = {contract.INPUT: np.broadcast_to(ys[:, None] + 1j * xs[None, :], image.shape).astype(np.complex128)}
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or not any(i in places for i in node.input):
            continue
        try:
            found = _node_positions(node, places, values, opsets)
        except Exception:  # a node the rules below did not foresee: its positions are unknown, never guessed
            found = [np.full(np.shape(values[o]), np.nan, np.complex128) if o in values else None for o in node.output]
        for name, place in zip(node.output, found, strict=False):
            value = values.get(name)
            if place is not None and value is not None and np.issubdtype(value.dtype, np.floating):
                places[name] = place
    return places, nodes


def ancestors(model: onnx.ModelProto, targets: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes ``targets`` depend on, in graph order."""
    nodes = model.graph.node
    producer = {o: i for i, node in enumerate(nodes) for o in node.output if o}
    wanted, stack = set(), [producer[t] for t in targets if t in producer]
    while stack:
        i = stack.pop()
        if i not in wanted:
            wanted.add(i)
            stack.extend(producer[name] for name in nodes[i].input if name in producer)
    return [nodes[i] for i in sorted(wanted)]


def _values(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], image: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor the ``nodes`` read or write, on ``image``: initializers, and one onnxruntime run for the rest."""
    inits = {t.name: t for t in model.graph.initializer}
    names = list(dict.fromkeys(o for node in nodes for o in node.output if o))
    session = large_protos.session(model, outputs=[helper.make_empty_tensor_value_info(n) for n in names])
    values = dict(zip(names, session.run(names, {contract.INPUT: image}), strict=True))
    for name in {i for node in nodes for i in node.input if i in inits}:
        values[name] = onnx.numpy_helper.to_array(inits[name])
    return values


def _node_positions(node, places: dict, values: dict, opsets: list) -> list[np.ndarray | None]:
    """The positions of ``node``'s outputs, first to last (``None`` or left out: an output that holds no data)."""
    shapes = [np.shape(values[o]) if o in values else None for o in node.output]
    op = node.op_type
    if op in MOVES:
        return _moved(node, MOVES[op], places, values, opsets)
    if op in ELEMENTWISE:
        data = node.input[1:] if op == "Where" else node.input
        return [_elementwise([places[i] for i in data if i in places], s) if s else None for s in shapes]
    if op in (REDUCES | GLOBAL_POOLS | WINDOWS) and node.input[0] not in places:  # a traced weight, not data
        return [None if s is None else np.full(s, np.nan, np.complex128) for s in shapes]
    if op in REDUCES or op in GLOBAL_POOLS:
        return [_reduced(node, places[node.input[0]], values, shapes[0])]
    if op in WINDOWS and _attr(node, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"):
        return [_windowed(node, places[node.input[0]], values, shapes[0])]  # MaxPool's indices: no data
    if op in ("MatMul", "Gemm"):
        return [_matmul(node, places, shapes[0])]
    if op == "Einsum" and "." not in _attr(node, "equation", b"").decode():
        return [_einsum(_attr(node, "equation", b"").decode(), [places.get(i) for i in node.input], shapes[0])]
    return [None if s is None else np.full(s, np.nan, np.complex128) for s in shapes]


def _attr(node: onnx.NodeProto, name: str, default):
    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def _moved(node, data: Sequence[int] | None, places: dict, values: dict, opsets: list) -> list[np.ndarray]:
    """``node`` run on the real and the imaginary parts of its inputs' positions (an untraced data input, padding:
    unknown)."""
    names = list(node.input)
    if node.op_type == "Pad":
        names[2:3] = [PAD]
        padded = onnx.NodeProto()
        padded.CopyFrom(node)
        del padded.input[:]
        padded.input.extend(names)
        node = padded
    graph = helper.make_graph(
        [node],
        "move",
        [helper.make_empty_tensor_value_info(n) for n in dict.fromkeys(names) if n],
        [helper.make_empty_tensor_value_info(o) for o in node.output if o],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=opsets))
    parts = []
    for part in (np.real, np.imag):
        feeds = {PAD: np.array(np.nan)}
        for k, name in enumerate(names):
            if name and name != PAD and (data is None or k in data):
                feeds[name] = part(places[name]) if name in places else np.full(np.shape(values[name]), np.nan)
            elif name and name != PAD:
                feeds[name] = values[name]
        parts.append(evaluator.run(None, {k: v for k, v in feeds.items() if k in names}))
    return [re + 1j * im for re, im in zip(*parts, strict=True)]


def _elementwise(inputs: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Positions of an elementwise output of ``shape``: those of its full-size inputs where they agree (else
    unknown); of its broadcast inputs only when none is full-size. An input at one single position (a global
    context expanded to full size, as MobileViTv2's) counts only when all are."""
    full = [p for p in inputs if p.shape == shape] or inputs
    full = [p for p in full if not _one_point(p)] or full
    try:
        first, *rest = (np.broadcast_to(p, shape) for p in full)
    except ValueError:  # a second output of another shape (LayerNormalization's mean)
        return np.full(shape, np.nan, np.complex128)
    for other in rest:
        first = np.where(np.abs(first - other) <= SAME, first, np.nan)
    return first


def _one_point(place: np.ndarray) -> bool:
    known = place[~np.isnan(place)]
    return known.size > 0 and bool(np.all(np.abs(known - known[0]) <= SAME))


def _reduced(node, place: np.ndarray, values: dict, shape: tuple[int, ...]) -> np.ndarray:
    """A reduction's output positions: the mean of the positions it combines."""
    if node.op_type in GLOBAL_POOLS:
        axes = tuple(range(2, place.ndim))
    else:
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = values[node.input[1]]
        if axes is None or len(axes) == 0:
            axes = () if _attr(node, "noop_with_empty_axes", 0) else range(place.ndim)
        axes = tuple(int(a) % place.ndim for a in axes)
    return place.mean(axis=axes, keepdims=True).reshape(shape) if axes else place.reshape(shape)


def _windowed(node, place: np.ndarray, values: dict, shape: tuple[int, ...]) -> np.ndarray:
    """A Conv's or pooling's output positions: those at the centre of each window (the mean of the two middle
    positions on an axis with an even extent; the channels' mean when they differ)."""
    spatial = place.ndim - 2
    kernel = _attr(node, "kernel_shape", None) or np.shape(values[node.input[1]])[2:]
    strides = _attr(node, "strides", None) or [1] * spatial
    dilations = _attr(node, "dilations", None) or [1] * spatial
    pads = _attr(node, "pads", None) or [0] * 2 * spatial
    across = place.mean(axis=1, keepdims=True)
    for a in range(spatial):
        centres = np.arange(shape[2 + a]) * strides[a] - pads[a] + dilations[a] * (kernel[a] - 1) / 2
        size = place.shape[2 + a]
        low = np.clip(np.floor(centres), 0, size - 1).astype(int)
        high = np.clip(np.ceil(centres), 0, size - 1).astype(int)
        across = (np.take(across, low, axis=2 + a) + np.take(across, high, axis=2 + a)) / 2
    return np.broadcast_to(across, shape)


def _constant_along(place: np.ndarray, axis: int) -> tuple[np.ndarray, bool]:
    """The mean of the known positions of ``place`` along ``axis`` (kept), and whether they agree on every line that
    has some (a line of unknowns does not count; a side whose every line is unknown is not constant)."""
    known = ~np.isnan(place)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(known, place, 0).sum(axis=axis, keepdims=True) / known.sum(axis=axis, keepdims=True)
    spread = np.where(known, np.abs(place - mean), 0)
    return mean, bool(known.any() and np.all(spread <= SAME))


def _einsum(equation: str, places: list[np.ndarray | None], shape: tuple[int, ...] | None) -> np.ndarray | None:
    """An Einsum's output positions, as :func:`_matmul`'s: those of the first traced operand whose positions are
    constant along the axes it sums over (or the mean along them when it is the only traced one)."""
    if shape is None:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    traced = [(sub, p) for sub, p in zip(inputs.split(","), places, strict=True) if p is not None]
    for sub, place in traced:
        summed = tuple(k for k, letter in enumerate(sub) if letter not in output)
        mean, constant = _constant_along(place, summed) if summed else (place, True)
        if constant or len(traced) == 1:
            kept = "".join(letter for letter in sub if letter in output)
            mean = mean.reshape([n for k, n in enumerate(mean.shape) if k not in summed])
            order = "".join(letter for letter in output if letter in kept)
            mean = np.einsum(f"{kept}->{order}", mean)
            return np.broadcast_to(
                mean.reshape([mean.shape[order.index(c)] if c in order else 1 for c in output]), shape
            )
    return np.full(shape, np.nan, np.complex128)


def _matmul(node, places: dict, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """A MatMul's (Gemm's) output positions: of the row of ``A`` or the column of ``B`` it comes from, whichever is
    constant along the contracted axis (``A``'s first); the mean along it when only one side is traced."""
    if shape is None:
        return None
    a, b = (places.get(name) for name in node.input[:2])
    if a is not None and node.op_type == "Gemm" and _attr(node, "transA", 0):
        a = a.T
    if b is not None and node.op_type == "Gemm" and _attr(node, "transB", 0):
        b = b.T
    if (a is not None and a.ndim < 2) or (b is not None and b.ndim < 2):
        return np.full(shape, np.nan, np.complex128)
    rows, rows_constant = _constant_along(a, -1) if a is not None else (None, False)
    columns, columns_constant = _constant_along(b, -2) if b is not None else (None, False)
    if rows is not None and (rows_constant or columns is None):
        return np.broadcast_to(rows, shape)
    if columns is not None and (columns_constant or rows is None):
        return np.broadcast_to(columns, shape)
    return np.full(shape, np.nan, np.complex128)

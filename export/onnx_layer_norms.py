"""LayerNorms over the last axis in an ONNX graph: ``LayerNormalization`` nodes and their decompositions.

Exporters at opset < 17 have no ``LayerNormalization`` op; the TorchScript exporter writes ``nn.LayerNorm`` as
``y = (x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) · γ + β`` over the last axis (ONNX ``LayerNormalization``,
opset 17, its function body): ReduceMean → Sub → Pow(2) | Mul(d, d) → ReduceMean → Add(eps) → Sqrt →
Div | Mul(Reciprocal) → [Mul(γ)] → [Add(β)], the axes an attribute (opset < 18) or an input. The chain is matched
structurally from its statistics, so that such a norm is found exactly as the op is.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from .autodiff.graph_info import GraphInfo


@dataclass(frozen=True)
class LayerNorm:
    """A LayerNorm over the last axis: its ``input``, ``output``, and the indices of its nodes (``last``: the
    producer of ``output``)."""

    input: str
    output: str
    nodes: frozenset[int]
    last: int


def layer_norms(model: onnx.ModelProto, info: GraphInfo) -> dict[str, LayerNorm]:
    """Every LayerNorm over the last axis of ``model``, by output tensor: ``LayerNormalization`` nodes with
    ``axis = -1`` (or rank - 1) and decomposed chains (:func:`_decomposed`)."""
    nodes = list(model.graph.node)
    producer = {o: i for i, node in enumerate(nodes) for o in node.output}
    readers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in dict.fromkeys(node.input):  # Mul(d, d) reads d once
            readers.setdefault(name, []).append(i)
    found = {}
    for i, node in enumerate(nodes):
        if node.op_type == "LayerNormalization" and not node.domain:
            axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
            if _last_axis(info, node.input[0], [axis]):
                found[node.output[0]] = LayerNorm(node.input[0], node.output[0], frozenset([i]), i)
        elif node.op_type == "ReduceMean":
            norm = _decomposed(nodes, producer, readers, info, i)
            if norm is not None:
                found[norm.output] = norm
    return found


def _decomposed(
    nodes: list[onnx.NodeProto], producer: dict[str, int], readers: dict[str, list[int]], info: GraphInfo, start: int
) -> LayerNorm | None:
    """The LayerNorm whose first ``ReduceMean`` (the mean) is ``nodes[start]``, or ``None``."""

    def only(name: str, *ops: str) -> int | None:
        """The single reader of ``name`` when it is one of ``ops``."""
        found = readers.get(name, [])
        return found[0] if len(found) == 1 and nodes[found[0]].op_type in ops else None

    def other(i: int, name: str) -> str | None:
        """The input of the binary node ``nodes[i]`` that is not ``name``."""
        rest = [n for n in nodes[i].input if n != name]
        return rest[0] if len(rest) == 1 and len(nodes[i].input) == 2 else None

    def constant(name: str) -> bool:
        """Whether ``name`` is a constant, through ``Identity`` nodes (TorchScript shares equal weights so)."""
        while name in producer and nodes[producer[name]].op_type == "Identity":
            name = nodes[producer[name]].input[0]
        return info.constant(name) is not None

    mean = nodes[start]
    x = mean.input[0]
    if not _mean_over_last(mean, info):
        return None
    subs = [
        i
        for i in readers.get(mean.output[0], [])
        if nodes[i].op_type == "Sub" and list(nodes[i].input) == [x, mean.output[0]]
    ]
    if len(subs) != 1:
        return None
    d = nodes[subs[0]].output[0]
    square = [
        i
        for i in readers.get(d, [])
        if (nodes[i].op_type == "Pow" and nodes[i].input[0] == d and _scalar(info, nodes[i].input[1]) == 2.0)
        or (nodes[i].op_type == "Mul" and list(nodes[i].input) == [d, d])
    ]
    if len(square) != 1:
        return None
    var = only(nodes[square[0]].output[0], "ReduceMean")
    if var is None or not _mean_over_last(nodes[var], info):
        return None
    add = only(nodes[var].output[0], "Add")
    if add is None or _scalar(info, other(add, nodes[var].output[0]) or "") is None:
        return None
    sqrt = only(nodes[add].output[0], "Sqrt")
    if sqrt is None:
        return None
    chain = [start, subs[0], square[0], var, add, sqrt]
    scale = only(nodes[sqrt].output[0], "Div", "Reciprocal")
    if scale is None:
        return None
    if nodes[scale].op_type == "Reciprocal":
        chain.append(scale)
        scale = only(nodes[scale].output[0], "Mul")
        if scale is None or other(scale, nodes[chain[-1]].output[0]) != d:
            return None
    elif list(nodes[scale].input) != [d, nodes[sqrt].output[0]]:
        return None
    chain.append(scale)
    if set(readers.get(d, [])) != {square[0], scale}:
        return None
    for op in ("Mul", "Add"):  # γ, β: constants over the last axis
        nxt = only(nodes[chain[-1]].output[0], op)
        if nxt is not None and constant(other(nxt, nodes[chain[-1]].output[0]) or ""):
            chain.append(nxt)
    return LayerNorm(x, nodes[chain[-1]].output[0], frozenset(chain), chain[-1])


def _mean_over_last(node: onnx.NodeProto, info: GraphInfo) -> bool:
    """Whether the ``ReduceMean`` ``node`` averages its input over the last axis only, keeping dims."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if not attrs.get("keepdims", 1):
        return False
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = info.constant(node.input[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    return axes is not None and _last_axis(info, node.input[0], axes)


def _last_axis(info: GraphInfo, name: str, axes: list[int]) -> bool:
    """Whether ``axes`` name exactly the last axis of ``name``."""
    if list(axes) == [-1]:
        return True
    shape = info.shape(name)
    return shape is not None and len(axes) == 1 and axes[0] == len(shape) - 1


def _scalar(info: GraphInfo, name: str) -> float | None:
    """The value of the constant one-element tensor ``name``, else ``None``."""
    value = info.constant(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

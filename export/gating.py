"""Optional outputs that cost no computation unless asked for: their nodes move into an ``If`` switched by an input.

onnxruntime runs every node of a graph whatever outputs a caller requests, so a file holding input gradients (three
backward passes through the whole network) and head graphs would make every CAM run pay for them. Each optional part
is therefore the then-branch of an ``If`` whose condition is a boolean graph input ``compute:<output>`` with a
default (:mod:`onnxcam.contract`); the else-branch yields empty tensors ``[0, …]`` of the same rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class Part:
    """Nodes (already in the graph) computing ``outputs``: ``(inner tensor, graph output)`` pairs, the output's
    value info naming it and giving its type and shape (static but for the batch)."""

    switch: str
    default: bool
    nodes: Sequence[onnx.NodeProto]
    outputs: Sequence[tuple[str, onnx.ValueInfoProto]]
    requires: str | None = None  # another switch (already a graph input) that must be on too: the condition is And


def subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Outer-scope tensors the subgraphs of ``node`` read (names used there but not defined there), recursively."""
    found: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            defined |= {o for n in graph.node for o in n.output}
            used = {i for n in graph.node for i in (*n.input, *subgraph_reads(n)) if i}
            used |= {o.name for o in graph.output}
            found |= used - defined
    return found


def reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs and what its subgraphs take from the enclosing graph."""
    return [*node.input, *sorted(subgraph_reads(node))]


def optional_input(name: str, rank: int, default: np.ndarray) -> tuple[onnx.ValueInfoProto, onnx.TensorProto]:
    """A graph input with a default value (a same-named initializer); the caller may feed another.

    Dims are declared unknown on purpose: with sizes (even a symbolic batch) onnxruntime takes the default's shape
    as the input's and plans fixed-size buffers from it, failing on larger batches.
    """
    elem = helper.np_dtype_to_tensor_dtype(default.dtype)
    return helper.make_tensor_value_info(name, elem, [None] * rank), numpy_helper.from_array(default, name)


def gate(graph: onnx.GraphProto, part: Part) -> None:
    """Move ``part.nodes`` into ``If(part.switch)``, whose outputs become graph outputs; add the switch input."""
    moved = {(n.name, tuple(n.output)) for n in part.nodes}
    kept = [n for n in graph.node if (n.name, tuple(n.output)) not in moved]
    del graph.node[:]
    graph.node.extend(kept)
    dims = [[d.dim_value for d in out.type.tensor_type.shape.dim][1:] for _, out in part.outputs]
    elems = [out.type.tensor_type.elem_type for _, out in part.outputs]
    types = [helper.tensor_dtype_to_np_dtype(e) for e in elems]
    inner = [_unknown_dims(name, len(d) + 1, e) for (name, _), d, e in zip(part.outputs, dims, elems, strict=True)]
    then_branch = helper.make_graph(list(part.nodes), part.switch + "/then", [], inner)
    empty = [
        helper.make_node(
            "Constant", [], [f"{part.switch}/empty_{i}"], value=numpy_helper.from_array(np.zeros((0, *d), dtype))
        )
        for i, (d, dtype) in enumerate(zip(dims, types, strict=True))
    ]
    else_outputs = [_unknown_dims(n.output[0], len(d) + 1, e) for n, d, e in zip(empty, dims, elems, strict=True)]
    else_branch = helper.make_graph(empty, part.switch + "/else", [], else_outputs)
    names = [out.name for _, out in part.outputs]
    condition = part.switch
    if part.requires:
        condition = f"{part.switch}/and"
        graph.node.append(helper.make_node("And", [part.switch, part.requires], [condition], name=condition))
    graph.node.append(
        helper.make_node("If", [condition], names, name=part.switch, then_branch=then_branch, else_branch=else_branch)
    )
    switch, default = optional_input(part.switch, 0, np.array(part.default))
    graph.input.append(switch)
    graph.initializer.append(default)
    graph.output.extend(out for _, out in part.outputs)


def _unknown_dims(name: str, rank: int, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, [None] * rank)

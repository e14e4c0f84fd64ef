"""Shapes that ONNX shape inference leaves unknown because they hang on arithmetic of constants.

The TorchScript exporter writes some shape computations as nodes over ``Constant`` outputs that ONNX data propagation
does not evaluate (torchvision's ``MultiheadAttention``: the split point of ``unflatten(-1, (3, E))`` is
``Mod(2, 3)``); the ``Reshape`` target built from it then has an unknown length, and every tensor after it an unknown
rank (``Squeeze``, ``Gather`` of ``q, k, v``). Here such nodes are evaluated once (``onnx.reference``), their values
become initializers of a weight-free copy of the graph, and shape inference runs again on that copy: the shapes come
out as if the exporter had folded the constants itself.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

#: Largest constant (elements) taken into folding: shape arithmetic, not weights.
MAX_FOLDED = 4096
#: Ops whose output is not a function of their inputs.
_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def _foldable(node: onnx.NodeProto, known: set[str]) -> bool:
    return (
        node.domain in ("", "ai.onnx")
        and node.op_type not in _RANDOM
        and node.op_type != "Constant"
        and any(node.input)
        and all(not name or name in known for name in node.input)
        and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
    )


def fold(model: onnx.ModelProto, constants: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Values of the tensors computed from small ``constants`` only (at most :data:`MAX_FOLDED` elements each), by
    evaluating those nodes with ``onnx.reference``; ``{}`` when there are none or the evaluation fails (then nothing
    is folded: the shapes stay as inferred)."""
    small = {name: value for name, value in constants.items() if value.size <= MAX_FOLDED}
    known = set(small)
    nodes = []
    for node in model.graph.node:
        if _foldable(node, known):
            nodes.append(node)
            known.update(o for o in node.output if o)
    if not nodes:
        return {}
    used = {i for node in nodes for i in node.input if i in small}
    outputs = [o for node in nodes for o in node.output if o]
    graph = helper.make_graph(
        nodes,
        "fold",
        [],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(small[name]), name) for name in sorted(used)],
    )
    try:
        values = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})
    except Exception:  # an op the reference runtime lacks: fold nothing
        return {}
    return {
        name: np.asarray(value)
        for name, value in zip(outputs, values, strict=True)
        if isinstance(value, np.ndarray) and value.size <= MAX_FOLDED
    }


def infer_folded(model: onnx.ModelProto, folded: dict[str, np.ndarray]) -> onnx.GraphProto:
    """Shape inference (with data propagation) on a copy of ``model`` whose ``folded`` tensors are initializers and
    whose large weights are typed inputs (their data not copied); returns the inferred graph."""
    graph = model.graph
    kept = [t for t in graph.initializer if t.name not in folded]
    small = [t for t in kept if np.prod(t.dims) <= MAX_FOLDED]
    large = [
        helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in kept if np.prod(t.dims) > MAX_FOLDED
    ]
    light = helper.make_graph(
        [node for node in graph.node if not any(o in folded for o in node.output)],
        graph.name,
        [*graph.input, *large],
        list(graph.output),
        initializer=[*small, *(numpy_helper.from_array(value, name) for name, value in folded.items())],
        value_info=list(graph.value_info),
    )
    copy = helper.make_model(light, opset_imports=model.opset_import, ir_version=model.ir_version)
    copy.functions.extend(model.functions)
    return shape_inference.infer_shapes(copy, data_prop=True).graph

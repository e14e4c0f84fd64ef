"""Static facts about a forward graph that gradient rules may read: shapes, dtypes, constant values."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .. import large_protos
from .shape_folding import MAX_FOLDED, fold, infer_folded

Dim = int | str | None


class GraphInfo:
    """Shapes and element types from ONNX shape inference, and the values of constant tensors.

    Where inference leaves a node's output without a shape, the nodes computed from constants alone are folded and
    inference runs again (:mod:`.shape_folding`); their values count as constants.
    Shapes are tuples whose entries are ``int`` (static), ``str`` (symbolic, e.g. the batch ``N``) or ``None``.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = large_protos.infer_shapes(model, weights=False, data_prop=True).graph
        self._types: dict[str, onnx.TypeProto] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self._types[vi.name] = _copied(vi.type)  # a reference would keep the whole inferred copy alive
        initializers = model.graph.initializer  # the inferred graph's are data-less in a large one
        # weights are read on demand (a copy of them all would double the export's memory)
        self._weights = {t.name: t for t in initializers if _elements(t) > MAX_FOLDED}
        self._constants: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in initializers if t.name not in self._weights
        }
        for t in initializers:
            self._types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        for node in graph.node:
            if node.op_type == "Constant" and not node.domain:
                value = _constant_node_value(node)
                if value is not None:
                    self._constants[node.output[0]] = value
            elif node.op_type == "Cast" and not node.domain and _small(self._constants.get(node.input[0])):
                # float16 conversion keeps blocked ops (Resize) in float32 behind a Cast of their constant inputs
                to = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
                value = self._constants[node.input[0]].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
                self._constants[node.output[0]] = value
        if any(self.shape(o) is None for node in graph.node for o in node.output if o):
            self._refine(model)

    def _refine(self, model: onnx.ModelProto) -> None:
        folded = fold(model, self._constants)
        if not folded:
            return
        self._constants.update(folded)
        graph = infer_folded(model, folded)
        for vi in [*graph.value_info, *graph.output]:
            if self.shape(vi.name) is None:
                self._types[vi.name] = vi.type
        for name, value in folded.items():
            self._types.setdefault(
                name,
                onnx.helper.make_tensor_type_proto(
                    onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
                ),
            )

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        """Inferred shape of ``name``, or ``None`` when even the rank is unknown."""
        tp = self._types.get(name)
        if tp is None or not tp.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for d in tp.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        return tuple(dims)

    def knows(self, name: str) -> bool:
        """Whether ``name`` is a tensor of the graph (a backward tensor added after this was built is not)."""
        return name in self._types

    def dtype(self, name: str) -> np.dtype:
        """numpy element type of ``name`` (float32 when unknown)."""
        tp = self._types.get(name)
        if tp is None or not tp.tensor_type.elem_type:
            return np.dtype(np.float32)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type))

    def constant(self, name: str) -> np.ndarray | None:
        """Value of ``name`` when it is an initializer or a ``Constant`` node's output (a weight: a fresh copy)."""
        if name in self._weights:
            return numpy_helper.to_array(self._weights[name])
        return self._constants.get(name)


def _elements(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims, dtype=np.int64))


def _copied(tp: onnx.TypeProto) -> onnx.TypeProto:
    copy = onnx.TypeProto()
    copy.CopyFrom(tp)
    return copy


def _small(value: np.ndarray | None) -> bool:
    """Whether ``value`` is a constant small enough to fold (shape arithmetic and scales, not weights)."""
    return value is not None and value.size <= MAX_FOLDED


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None

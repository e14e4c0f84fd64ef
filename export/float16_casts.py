"""float16 graphs and their ``Cast`` nodes to float32.

onnxconverter-common's ``convert_float_to_float16`` declares every float tensor float16 but leaves a
``Cast(to=FLOAT)`` as it is (detectors cast their integer anchor grids to float: ``arange(h).to(x.dtype)``), so the
file it writes declares float16 where the ``Cast`` writes float32 and onnxruntime refuses to load it. The converter's
own remedy is ``node_block_list``: a blocked ``Cast`` keeps float32 and the converter casts its output to float16
after it (exact for integers below 2²⁴ and for any float: one rounding to float16 either way).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from .errors import ExportError


class Float16CastError(ExportError):
    """A float16 file whose ``Cast`` nodes write float32 where it declares float16 (onnxruntime cannot load it)."""


def float32_casts(model: onnx.ModelProto) -> list[str]:
    """Names of the top graph's ``Cast(to=FLOAT)`` nodes (unnamed ones named after their output, in place): the
    ``node_block_list`` to convert ``model`` to float16 with."""
    casts = [
        n
        for n in model.graph.node
        if n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)
    ]
    for node in casts:
        node.name = node.name or f"onnxcam/cast/{node.output[0]}"
    return [n.name for n in casts]


def refuse_mistyped_casts(model: onnx.ModelProto) -> None:
    """Raise :class:`Float16CastError` when a ``Cast(to=FLOAT)`` writes a tensor the graph declares float16."""
    declared = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.output)}
    wrong = [
        n.name or n.output[0]
        for n in model.graph.node
        if n.op_type == "Cast"
        and any(a.name == "to" and a.i == TensorProto.FLOAT for a in n.attribute)
        and declared.get(n.output[0]) == TensorProto.FLOAT16
    ]
    if wrong:
        names = ", ".join(f"'{w}'" for w in wrong[:3]) + (", …" if len(wrong) > 3 else "")
        raise Float16CastError(
            f"float16 file: {len(wrong)} Cast node(s) ({names}) write float32 where the graph declares float16 "
            "(onnxconverter-common's convert_float_to_float16 leaves Cast(to=float) as is), so onnxruntime cannot "
            "load it; convert the float32 model again with node_block_list=[those Cast nodes], or export the "
            "float32 file with --precision float16"
        )

"""A normalisation an ONNX file applies to its input itself, read off its first ops (so none is added twice).

A float graph starting ``input`` → (Transpose/Cast/Identity) → Sub/Div/Mul/Add with constant operands → ``Conv``
normalises inside: onnxcam then feeds pixels without mean/std, on the range the constants expect (see
:attr:`InsideNormalisation.takes_0_255`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract

from . import large_protos
from .inputs import consumers
from .source_batch import declared_batch

#: Ops a normalisation at the start of a graph is made of (with constant operands), and ops passing it through.
_AFFINE_OPS = frozenset({"Sub", "Div", "Mul", "Add"})
_PASS_OPS = frozenset({"Transpose", "Cast", "Identity"})


@dataclass(frozen=True)
class InsideNormalisation:
    """A normalisation the model applies itself before its first ``Conv``: ``ops`` in order, the per-channel affine
    map ``a·x + b`` they compute on the explainer's input, and the pixel range that map expects."""

    ops: tuple[str, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def takes_0_255(self) -> bool:
        """Whether the map expects pixels 0–255: its mean pixel ``−b/a`` lies above 1.5, or its gain below 0.1
        (``x/255``, ``(x − 127.5)/127.5``, Caffe's ``x − 104``), rather than [0, 1] (``(x − 0.485)/0.229``,
        ``2x − 1``)."""
        means = [abs(b / a) for a, b in zip(self.a, self.b, strict=True) if a != 0]
        return max(means, default=0.0) > 1.5 or max(abs(a) for a in self.a) < 0.1


def inside_normalisation(model: onnx.ModelProto, shape: tuple[int, int, int]) -> InsideNormalisation | None:
    """The normalisation at the start of a float32 NCHW forward graph (``input`` → Transpose/Cast → Sub/Div/Mul/Add
    with constants → ``Conv``), measured with onnxruntime on inputs of 0s and 1s of ``shape`` ``(C, H, W)``; ``None``
    when the graph does not start so."""
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    name, chain = contract.INPUT, []
    while len(users := consumers(model, name)) == 1:
        node = users[0]
        affine = node.op_type in _AFFINE_OPS and all(i == name or i in constants for i in node.input)
        if node.op_type not in _PASS_OPS and not affine:
            break
        chain.append(node.op_type)
        name = node.output[0]
    if not any(op in _AFFINE_OPS for op in chain) or len(users) != 1 or users[0].op_type != "Conv":
        return None
    session = large_protos.session(model, outputs=[helper.make_tensor_value_info(name, TensorProto.FLOAT, None)])
    rows = declared_batch(model) or 1  # a source kept at its fixed batch runs that many
    zero, one = (session.run([name], {contract.INPUT: np.full((rows, *shape), v, np.float32)})[0] for v in (0, 1))
    b = zero.mean(axis=(0, 2, 3))
    return InsideNormalisation(tuple(chain), tuple((one.mean(axis=(0, 2, 3)) - b).tolist()), tuple(b.tolist()))

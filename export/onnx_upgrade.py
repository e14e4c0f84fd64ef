"""Upgrade an old ONNX graph (opset 7 and later) to the opset the explainer builder works in, without changing it.

``onnx.version_converter`` does the op-by-op work (``Upsample`` → ``Resize``, attribute → input moves, …) but turns
``Upsample`` and opset-10 ``Resize`` into an opset-11+ ``Resize`` whose default coordinate transformation
(``half_pixel``) differs from theirs (``asymmetric``: ``x_in = x_out / scale``, nearest neighbour ``floor``): a
``linear`` upsampling then computes other values (checked: up to 1.7 on unit-normal input). Those nodes get their
original semantics back explicitly. Then the upgraded graph is run against the original on one random input with
onnxruntime; a difference refuses the file in one line rather than explaining a different model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from . import large_protos
from .errors import ExportError

#: Largest relative difference between the original and the upgraded graph's output that counts as equal.
UPGRADE_TOLERANCE = 1e-4
#: The same for a graph computing in float16/bfloat16: onnxruntime may fuse or order the upgraded graph's kernels
#: differently, and each rounding is ~1e-3 there (measured: 3e-4 … 1.1e-3 on mobilenet_v3_large, opset 17 → 18).
REDUCED_TOLERANCE = 1e-2


class UpgradeError(ExportError):
    """The opset upgrade failed or changed what the model computes."""


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (1 when it names none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _restore_semantics(model: onnx.ModelProto) -> None:
    """Asymmetric coordinates and ``floor`` nearest neighbours on every ``Resize`` (all came from ``Upsample`` or an
    opset-10 ``Resize`` when the original opset is below 11)."""
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        kept = [a for a in node.attribute if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
        node.attribute.append(helper.make_attribute("nearest_mode", "floor"))


def _probe(model: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """A random feed for the model's one data input (its own batch where fixed, else 1), or ``None`` when its shape
    is not static beyond the batch."""
    value = model.graph.input[0]
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if not dims or any(d is None for d in dims[1:]):
        return None
    shape = [dims[0] or 1, *dims[1:]]
    dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, shape) if np.issubdtype(dtype, np.integer) else rng.random(shape)
    return {value.name: data.astype(dtype)}


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return large_protos.session(model).run([model.graph.output[0].name], feed)[0]


def upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``model`` at ``opset`` (unchanged when already there), computing what it computed before."""
    before = opset_of(model)
    if before >= opset:
        return model
    try:
        upgraded = large_protos.convert_version(model, opset)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UpgradeError(f"cannot upgrade opset {before} → {opset}: {first}") from None
    if before < 11:
        _restore_semantics(upgraded)
    upgraded.ir_version = max(
        upgraded.ir_version, helper.find_min_ir_version_for(upgraded.opset_import, ignore_unknown=True)
    )
    feed = _probe(model)
    if feed is None:
        return upgraded
    try:
        old, new = _run(model, feed), _run(upgraded, feed)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UpgradeError(f"opset {before} → {opset}: onnxruntime cannot run the graph ({first})") from None
    if old.shape != new.shape:
        diff = np.inf
    else:
        scale = max(float(np.abs(old).max(initial=0.0)), 1e-12)
        diff = float(np.abs(old.astype(np.float64) - new).max(initial=0.0)) / scale
    reduced = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    half = any(t.data_type in reduced for t in model.graph.initializer)
    if not diff <= (REDUCED_TOLERANCE if half else UPGRADE_TOLERANCE):
        raise UpgradeError(
            f"upgrading opset {before} → {opset} changes the model's output (relative difference {diff:.2g}); "
            f"re-export the model at opset ≥ {opset}"
        )
    return upgraded

"""The batch of an ONNX source file: made dynamic when that is provably safe, kept as the file fixed it otherwise.

Most deployed files have a fixed batch (dynamo's default is 1). :func:`free_batch` makes dim 0 symbolic and rewrites
constant ``Reshape`` targets that hard-code the batch; that is exact only when the graph keeps the batch on its own
axis. Exports that fold it into other shapes (Swin's windows ``[B·nW, 49, C]``, attention's ``[B·heads, L, d]``, a
flatten ``[-1]`` then ``[1, K]``) either fail at another batch or, worse, run and mix images. :func:`choose_batch`
therefore checks the rewrite on distinct random images (a batch of ``2B`` against each chunk of ``B`` run alone on
the original) and keeps the file's batch ``B`` when it fails: the explainer graph is then built at batch ``B``, the
metadata records it (``onnxcam.fixed_batch``) and the runtime feeds chunks of exactly ``B`` images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam import contract

from . import large_protos
from .memory import release_for

#: Largest relative difference (max-abs over max-abs of the scores) between a batch and its images run alone that is
#: rounding (batch-dependent kernel blocking: ~1e-7 in float32); float16 graphs round at ~1e-3.
MIX_TOLERANCE = {"float32": 1e-4, "reduced": 2e-2}


def declared_batch(model: onnx.ModelProto) -> int | None:
    """The static dim 0 of the model's first input (``None``: symbolic or absent)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def graph_batch(explainer: onnx.ModelProto) -> int | None:
    """The fixed batch an explainer graph runs at (metadata ``onnxcam.fixed_batch``; ``None``: any batch)."""
    props = {p.key: p.value for p in explainer.metadata_props}
    return int(props[contract.META_FIXED_BATCH]) if contract.META_FIXED_BATCH in props else None


def check_batch(explainer: onnx.ModelProto, wanted: int = 2) -> int:
    """The batch a check of ``explainer`` can run: ``wanted``, or the graph's fixed batch."""
    return graph_batch(explainer) or wanted


def _clear_shapes(model: onnx.ModelProto) -> None:
    """Forget inferred shapes (re-inferred from the input's by later stages)."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")


def free_batch(model: onnx.ModelProto) -> int | None:
    """Make dim 0 of the input symbolic (in place); constant Reshape targets that hard-code the batch copy it instead
    (0). Returns the batch the file had fixed (``None``: it was symbolic)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    fixed = declared_batch(model)
    if dims:
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "N"
    _clear_shapes(model)
    if fixed is None:
        return None
    constants = {t.name: t for t in model.graph.initializer}
    reshapes = [n for n in model.graph.node if n.op_type == "Reshape" and n.input[1] in constants]
    literal_zeros = {n.input[1] for n in reshapes if any(a.name == "allowzero" and a.i for a in n.attribute)}
    rewritten = set()
    for name in dict.fromkeys(n.input[1] for n in reshapes):
        shape = numpy_helper.to_array(constants[name]).copy()
        if shape.size and shape[0] == fixed and not (name in literal_zeros and (shape[1:] == 0).any()):
            shape[0] = 0  # copy the batch
            constants[name].CopyFrom(numpy_helper.from_array(shape.astype(np.int64), name))
            rewritten.add(name)
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in rewritten:
            for attr in node.attribute:
                if attr.name == "allowzero":
                    attr.i = 0  # allowzero=1 (dynamo exports) would read the copied batch 0 as a literal 0
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3] in constants:
            _resize_spatial_only(model.graph, node, constants[node.input[3]], fixed)
    return fixed


def _resize_spatial_only(graph: onnx.GraphProto, node: onnx.NodeProto, sizes: onnx.TensorProto, batch: int) -> None:
    """A ``Resize`` to constant ``sizes`` ``[batch, C, H, W]`` (dynamo exports) resizes ``axes=[2, 3]`` to ``[H, W]``
    instead, so any batch passes (opset ≥ 18)."""
    values = numpy_helper.to_array(sizes)
    if values.size != 4 or values[0] != batch or any(a.name == "axes" for a in node.attribute):
        return
    name = sizes.name + "/spatial"
    if name not in {t.name for t in graph.initializer}:
        graph.initializer.append(numpy_helper.from_array(values[2:].astype(np.int64), name))
    node.input[3] = name
    node.attribute.append(onnx.helper.make_attribute("axes", [2, 3]))


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:160]


def rewrite_problem(original: onnx.ModelProto, dynamic: onnx.ModelProto, fixed: int) -> str | None:
    """Why ``dynamic`` (``original`` after :func:`free_batch`) is not exact, or ``None`` when it is, as far as a probe
    shows: ``2·fixed`` distinct random images in one run of ``dynamic`` must give the scores of ``original`` run on
    each chunk of ``fixed`` alone (a folded batch that still runs mixes images). ``None`` too when ``original`` does
    not run at its own batch (not a batch question: the later stages say what is wrong) or its H/W are symbolic (no
    probe size: the verification checks instead)."""
    tensor = original.graph.input[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if any(d is None for d in dims[1:]):
        return None
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
    rng = np.random.default_rng(0)
    shape = (2 * fixed, *dims[1:])
    x = (rng.standard_normal(shape) if dtype.kind == "f" else rng.integers(0, 256, shape)).astype(dtype)
    name = original.graph.input[0].name
    try:  # one session at a time: each holds its own copy of the weights
        alone = np.concatenate(_scores(original, [{name: x[i : i + fixed]} for i in (0, fixed)]))
    except Exception:
        return None
    release_for(original)
    try:
        together = _scores(dynamic, [{name: x}])[0]
    except Exception as exc:
        return f"it cannot run on a batch of {len(x)}: {_first_line(exc)}"
    if together.shape != alone.shape:
        return f"a batch of {len(x)} gives scores {list(together.shape)}, not {list(alone.shape)}"
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    reduced = any(t.data_type in low for t in original.graph.initializer)
    tolerance = MIX_TOLERANCE["reduced" if reduced else "float32"]
    a, b = together.astype(np.float64), alone.astype(np.float64)
    error = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-30)) if a.size else 0.0
    if not error <= tolerance:
        return (
            f"{len(x)} distinct images in one run give other scores than each run alone (relative difference "
            f"{error:.1e}): the graph mixes the images of a batch"
        )
    return None


def _scores(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The first output of ``model`` for each of ``feeds``, from one onnxruntime session freed on return."""
    session = large_protos.session(model, log_level=4)
    return [session.run(None, feed)[0] for feed in feeds]


def choose_batch(model: onnx.ModelProto, log: Callable[[str], None] | None = None) -> onnx.ModelProto:
    """``model`` with a dynamic batch when the file's is symbolic or :func:`rewrite_problem` finds none; else
    ``model`` at its fixed batch ``B`` (shapes cleared for re-inference), said in one line through ``log``."""
    fixed = declared_batch(model)
    if fixed is None:
        free_batch(model)
        return model
    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    free_batch(dynamic)
    problem = rewrite_problem(model, dynamic, fixed)
    if problem is None:
        return dynamic
    _clear_shapes(model)
    if log is not None:
        log(keep_message(fixed, problem))
    return model


def keep_message(fixed: int, problem: str) -> str:
    """The export log line of a file kept at its fixed batch."""
    runs = "one image per run" if fixed == 1 else f"{fixed} images per run (the last run padded)"
    return (
        f"the ONNX file has a fixed batch of {fixed} that its graph folds into other shapes ({problem}): "
        f"kept, the explainer graph takes {runs}"
    )

"""Deployed precision: float16 graphs (onnxconverter-common's ``convert_float_to_float16``, with or without
``keep_io_types``) get float32 I/O at the contract's edges, and their explainer is measured against float64.

The inside of the graph stays in the model's own type (the backward rules emit constants in each node's type,
:attr:`~onnxcam_export.autodiff.context.VJPContext.float_type`); ``activation:``/``gradient:`` come out in that type
and the runtime casts them to float32 on read. Only ``input`` (fed float32 images) and ``scores`` are cast here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract

from .autodiff.graph_info import GraphInfo
from .float64 import evaluate_float64
from .verify import Report, fast_kernels, relative_error, run

FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)


def _cast_edge(graph: onnx.GraphProto, vi: onnx.ValueInfoProto, inner: str, elem: int, *, is_input: bool) -> None:
    """Rename the graph's tensor ``vi.name`` to ``inner`` (of type ``elem``) inside the graph, declare ``vi`` float32
    and bridge the two with a ``Cast``."""
    name = vi.name
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
        node.output[:] = [inner if o == name else o for o in node.output]
    src, dst = (name, inner) if is_input else (inner, name)
    to = elem if is_input else TensorProto.FLOAT
    cast = helper.make_node("Cast", [src], [dst], name=f"onnxcam/cast/{name}", to=to)
    if is_input:
        graph.node.insert(0, cast)
    else:
        graph.node.append(cast)
    vi.type.tensor_type.elem_type = TensorProto.FLOAT


def float32_io(model: onnx.ModelProto) -> str | None:
    """Give a reduced-precision graph float32 ``input``/``scores`` (``Cast`` nodes at the edges), in place.

    The contract feeds float32 images and reads float32 scores; a float16 model (``convert_float_to_float16``
    without ``keep_io_types``) declares both float16. Returns the inner type's name (``'float16'``) when a cast was
    added, else ``None``.
    """
    graph = model.graph
    changed = None
    for vi, is_input in [(graph.input[0], True), (graph.output[0], False)]:
        elem = vi.type.tensor_type.elem_type
        if elem in FLOAT_TYPES:
            _cast_edge(graph, vi, f"{vi.name}/{helper.tensor_dtype_to_np_dtype(elem).name}", elem, is_input=is_input)
            changed = helper.tensor_dtype_to_np_dtype(elem).name
    return changed


def inner_type(model: onnx.ModelProto, layers: Sequence[str]) -> np.dtype:
    """Element type of the tapped layers (float32, or float16 for a float16 graph)."""
    info = GraphInfo(model)
    return info.dtype(contract.activation_name(layers[0]))


def float64_agreement(
    explainer: onnx.ModelProto, layers: Sequence[str], input_shape: tuple[int, ...], batch: int = 2, seed: int = 0
) -> dict[str, float]:
    """How far the deployed graph's gradients lie from the same graph evaluated in float64 (every float16/float32
    tensor, constant and cast raised to float64, :func:`.float64.to_float64`), on random inputs.

    Returns ``max|G_deployed − G_64| / max|G_64|`` per ``gradient:<layer>`` (worst image) and for ``scores``. This
    measures rounding of the deployed type (≈1e-3 for float16: 11-bit mantissa), not correctness of the rules, which
    the finite-difference check covers.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.full(batch, contract.TOP1, np.int64)
    feeds = {contract.INPUT: x, contract.TARGET: target}
    ours = run(explainer, feeds)
    exact = evaluate_float64(explainer, feeds, fast_kernels())
    names = [contract.SCORES, *(contract.gradient_name(layer) for layer in layers)]
    return {
        name: max(
            relative_error(ours[name][i].astype(np.float64), exact[name][i].astype(np.float64)) for i in range(batch)
        )
        for name in names
    }


def with_agreement(
    check: Callable[[onnx.ModelProto], Report],
    forward: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    log: Callable[[str], None],
) -> Callable[[onnx.ModelProto], Report]:
    """``check``, preceded for a reduced-precision graph by a logged :func:`float64_agreement` figure."""
    dtype = inner_type(forward, layers)
    if dtype == np.float32:
        return check

    def checked(explainer: onnx.ModelProto) -> Report:
        errors = float64_agreement(explainer, layers, input_shape)
        gradients = max(v for k, v in errors.items() if k != contract.SCORES)
        log(
            f"{dtype.name} graph vs the same graph in float64 (random inputs): gradients {gradients:.1e}, "
            f"scores {errors[contract.SCORES]:.1e} (relative, worst image)"
        )
        return check(explainer)

    return checked

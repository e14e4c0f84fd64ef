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
from .score_activation import MOVING
from .scores_head import _ACTIVATIONS
from .source_batch import check_batch
from .verify import SEED_PATH_OBJECTIVE, Report, fast_kernels, needs_seed_path, relative_error, run

FLOAT_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
#: A tapped activation this far (relative) from its float64 value has lost its information in the reduced type.
UNDERFLOW = 0.5


def _cast_input(graph: onnx.GraphProto, elem: int) -> None:
    """Declare the graph input float32 and cast it to ``elem`` for the nodes that read it."""
    vi = graph.input[0]
    inner = f"{vi.name}/{helper.tensor_dtype_to_np_dtype(elem).name}"
    for node in graph.node:
        node.input[:] = [inner if i == vi.name else i for i in node.input]
    graph.node.insert(0, helper.make_node("Cast", [vi.name], [inner], name=f"onnxcam/cast/{vi.name}", to=elem))
    vi.type.tensor_type.elem_type = TensorProto.FLOAT


def _cast_output(model: onnx.ModelProto) -> None:
    """Make the graph output float32 by one ``Cast`` before its trailing moving ops and Softmax/Sigmoid, so
    :mod:`.scores_head` still finds them and the logits it explains are the deployed ones, exactly. Float casts
    already in that tail (``keep_io_types`` puts one after the Softmax) become ``Identity``."""
    graph = model.graph
    info = GraphInfo(model)
    vi = graph.output[0]
    producers = {o: n for n in graph.node for o in n.output}
    name, tail = vi.name, []
    while (node := producers.get(name)) is not None and (
        node.op_type in (*MOVING, *_ACTIVATIONS) or (node.op_type == "Cast" and info.dtype(name).kind == "f")
    ):
        name = node.input[0]
        tail.append(node)
    casts = [node for node in tail if node.op_type == "Cast"]
    if info.dtype(name) == np.float32 and not casts and vi.type.tensor_type.elem_type == TensorProto.FLOAT:
        return
    for node in casts:
        node.op_type = "Identity"
        del node.attribute[:]
    moved = {o for node in tail for o in node.output}  # float32 now: their reduced-type value_info would clash
    kept = [v for v in graph.value_info if v.name not in moved]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    cast = f"{name}/float32"
    at = len(graph.node)
    if not tail:  # the producer of the output writes the reduced type, the Cast the output
        cast, name = name, f"{name}/reduced"
        producers[cast].output[:] = [name if o == cast else o for o in producers[cast].output]
    else:
        tail[-1].input[0] = cast
        at = list(graph.node).index(tail[-1])
    node = helper.make_node("Cast", [name], [cast], name=f"onnxcam/cast/{vi.name}", to=TensorProto.FLOAT)
    graph.node.insert(at, node)
    vi.type.tensor_type.elem_type = TensorProto.FLOAT


def float32_io(model: onnx.ModelProto) -> None:
    """Give a reduced-precision graph float32 ``input``/``scores`` (``Cast`` nodes at the edges), in place.

    The contract feeds float32 images and reads float32 scores; a float16 model (``convert_float_to_float16``
    without ``keep_io_types``) declares both float16. The inside stays in its own type.
    """
    graph = model.graph
    if (elem := graph.input[0].type.tensor_type.elem_type) in FLOAT_TYPES:
        _cast_input(graph, elem)
    _cast_output(model)


def inner_type(model: onnx.ModelProto, layers: Sequence[str]) -> np.dtype:
    """Element type of the tapped layers (float32, or float16 for a float16 graph)."""
    info = GraphInfo(model)
    return info.dtype(contract.activation_name(layers[0]))


def float64_agreement(
    explainer: onnx.ModelProto, layers: Sequence[str], input_shape: tuple[int, ...], batch: int = 2, seed: int = 0
) -> dict[str, float]:
    """How far the deployed graph's gradients lie from the same graph evaluated in float64 (every float16/float32
    tensor, constant and cast raised to float64, :func:`.float64.to_float64`), on random inputs.

    Returns ``max|ours − exact| / max|exact|`` (worst image) for ``scores`` and every ``activation:``/``gradient:``.
    The gradients are of the top-1 score, or for a detector or a dense output of ``Σ seed ⊙ scores`` with a random
    seed (a detector's flat top-1 is often a box coordinate clipped at the image's edge: gradient 0 in both).
    This measures rounding of the deployed type (≈1e-3 for float16: 11-bit mantissa; 1 where values underflow to 0),
    not correctness of the rules, which the finite-difference check covers.
    """
    batch = check_batch(explainer, batch)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.full(batch, contract.TOP1, np.int64)
    metadata = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props})
    seeded = SEED_PATH_OBJECTIVE.draw(explainer, batch, rng) if needs_seed_path(explainer, metadata) else {}
    feeds = {contract.INPUT: x, contract.TARGET: target, **{k: v.astype(np.float32) for k, v in seeded.items()}}
    ours = run(explainer, feeds)
    # the same objective in both: the class the deployed graph picked (a detector's flat top-1 ties across anchors)
    exact = evaluate_float64(explainer, {**feeds, contract.TARGET: ours[contract.TARGET_USED]}, fast_kernels())
    names = [
        contract.SCORES,
        *(f(layer) for f in (contract.activation_name, contract.gradient_name) for layer in layers),
    ]
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
        worst = {p: max(v for k, v in errors.items() if k.startswith(p)) for p in ("activation:", "gradient:")}
        log(
            f"{dtype.name} graph vs the same graph in float64 (random inputs): activations {worst['activation:']:.1e}"
            f", gradients {worst['gradient:']:.1e}, scores {errors[contract.SCORES]:.1e} (relative, worst image)"
        )
        lost = [k for k, v in errors.items() if k.startswith("activation:") and v >= UNDERFLOW]
        if lost:
            log(
                f"warning: {dtype.name} loses most of '{lost[0]}' (relative error {errors[lost[0]]:.1e} vs float64, "
                "e.g. values below its range rounding to 0): the deployed model's maps will not match float32's"
            )
        return check(explainer)

    return checked

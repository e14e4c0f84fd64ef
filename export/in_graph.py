"""Heat maps computed inside the explainer graph: ``cam:<method>`` outputs in standard ONNX ops (issue 16).

Any ONNX runtime (onnxruntime in C, C++, C#, Java, JavaScript; OpenVINO; TensorRT) then gets the final map from one
run. Each method is one small builder mirroring its numpy twin in :mod:`onnxcam.methods` (same formula, same order of
operations); :func:`add_post_processing` mirrors :mod:`onnxcam.postprocess` (per layer: ReLU, min-max normalisation
``(m − min) / (max + 1e-7)``, bilinear resize to the input's ``H×W`` — ONNX ``Resize`` linear/half_pixel is
``cv2.resize(INTER_LINEAR)``; then the mean over layers of ``max(map, 0)``, normalised again). Each method's nodes sit
in an ``If`` switched by ``compute:cam:<method>`` (default true) and ``compute:gradients`` (:mod:`.gating`). At export,
:func:`check_cams` compares every map with the Python runtime's math on one run over random images.

Eigen-CAM and Eigen-Grad-CAM are not offered: they need an SVD, which standard ONNX ops compute only approximately
(power iteration with a fixed number of steps).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.scores import is_binary

from . import large_protos
from .errors import ExportError
from .gating import Part, gate
from .source_batch import check_batch

if TYPE_CHECKING:
    import onnxruntime as ort

_NOT_IN_GRAPH = {
    "eigencam": "needs an SVD, which standard ONNX ops compute only approximately",
    "eigengradcam": "needs an SVD, which standard ONNX ops compute only approximately",
}


@dataclass
class Nodes:
    """Nodes being built under one name ``prefix``; :meth:`op` appends one node and returns its output's name."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        out = f"{self.prefix}/{len(self.nodes)}/{op_type}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray | float | Sequence[int]) -> str:
        array = np.asarray(value, np.int64 if isinstance(value, (list, tuple)) else np.float32)
        return self.op("Constant", value=numpy_helper.from_array(array))


#: ``(nodes, A, G) -> raw map [N, 1, h, w]`` from activations and gradients ``[N, K, h, w]``.
CamBuilder = Callable[[Nodes, str, str], str]
_BUILDERS: dict[str, CamBuilder] = {}


def _register(name: str) -> Callable[[CamBuilder], CamBuilder]:
    def add(builder: CamBuilder) -> CamBuilder:
        _BUILDERS[name] = builder
        return builder

    return add


def _spatial_sum(b: Nodes, x: str) -> str:
    """``Σ_ij x`` per image and channel, kept as ``[N, K, 1, 1]``."""
    return b.op("ReduceSum", x, b.const([2, 3]), keepdims=1)


def _channel_sum(b: Nodes, x: str) -> str:
    """``Σ_k x`` → ``[N, 1, h, w]``."""
    return b.op("ReduceSum", x, b.const([1]), keepdims=1)


def _weighted(b: Nodes, a: str, weights: str) -> str:
    """``M = Σ_k α_k A_k`` (:func:`onnxcam.methods.base.channel_weighted_map`)."""
    return _channel_sum(b, b.op("Mul", weights, a))


@_register("gradcam")
def grad_cam(b: Nodes, a: str, g: str) -> str:
    """Grad-CAM: ``α_k = (1/Z) Σ_ij G_kij``."""
    return _weighted(b, a, b.op("ReduceMean", g, b.const([2, 3]), keepdims=1))


@_register("gradcam++")
def grad_cam_plusplus(b: Nodes, a: str, g: str) -> str:
    """Grad-CAM++: ``α_k = Σ_ij max(G,0)·G² / (2G² + (Σ_ij A_k)·G³ + 1e-6)`` (0 where G = 0)."""
    g2 = b.op("Mul", g, g)
    g3 = b.op("Mul", g2, g)
    denominator = b.op(
        "Add", b.op("Add", b.op("Mul", b.const(2.0), g2), b.op("Mul", _spatial_sum(b, a), g3)), b.const(1e-6)
    )
    nonzero = b.op("Not", b.op("Equal", g, b.const(0.0)))
    ratio = b.op("Where", nonzero, b.op("Div", g2, denominator), b.const(0.0))
    return _weighted(b, a, _spatial_sum(b, b.op("Mul", b.op("Relu", g), ratio)))


@_register("xgradcam")
def xgrad_cam(b: Nodes, a: str, g: str) -> str:
    """XGrad-CAM: ``α_k = Σ_ij G_kij · A_kij / (Σ_ij A_kij + 1e-7)``."""
    normaliser = b.op("Add", _spatial_sum(b, a), b.const(1e-7))
    return _weighted(b, a, _spatial_sum(b, b.op("Div", b.op("Mul", g, a), normaliser)))


@_register("hirescam")
def hires_cam(b: Nodes, a: str, g: str) -> str:
    """HiResCAM: ``M = Σ_k G_k ⊙ A_k``."""
    return _channel_sum(b, b.op("Mul", g, a))


@_register("gradcamelementwise")
def grad_cam_elementwise(b: Nodes, a: str, g: str) -> str:
    """Grad-CAM element-wise: ``M = Σ_k max(G_k ⊙ A_k, 0)``."""
    return _channel_sum(b, b.op("Relu", b.op("Mul", g, a)))


@_register("layercam")
def layer_cam(b: Nodes, a: str, g: str) -> str:
    """LayerCAM: ``M = Σ_k max(G_k, 0) ⊙ A_k``."""
    return _channel_sum(b, b.op("Mul", b.op("Relu", g), a))


def available() -> tuple[str, ...]:
    """Methods that can be computed inside the graph."""
    return tuple(_BUILDERS)


def resolve(methods: Sequence[str]) -> tuple[str, ...]:
    """Registry names of ``methods`` (``Grad-CAM++`` → ``gradcam++``), in order, without repeats; a method that
    cannot be computed in-graph raises :class:`ExportError` naming it, the cause and the way out."""
    found: list[str] = []
    for method in methods:
        key = method.strip().lower().replace("-", "").replace("_", "")
        if key in _NOT_IN_GRAPH:
            raise ExportError(f"--in-graph {method}: {_NOT_IN_GRAPH[key]}; compute it with the Python runtime")
        if key not in _BUILDERS:
            raise ExportError(f"--in-graph {method}: not an in-graph method; choose from {', '.join(available())}")
        if key not in found:
            found.append(key)
    return tuple(found)


def _normalize(b: Nodes, m: str) -> str:
    """``m ← m − min(m)``; ``m ← m / (max(m) + 1e-7)`` per image over the last two axes."""
    shifted = b.op("Sub", m, b.op("ReduceMin", m, b.const([2, 3]), keepdims=1))
    return b.op("Div", shifted, b.op("Add", b.op("ReduceMax", shifted, b.const([2, 3]), keepdims=1), b.const(1e-7)))


def add_post_processing(b: Nodes, raw_maps: Sequence[str], image: str) -> str:
    """Final map ``[N, H, W]`` from raw maps ``[N, 1, h, w]`` (one per layer), ``H, W`` those of ``image``.

    :func:`onnxcam.postprocess.postprocess`: per layer ReLU → normalise → bilinear resize (half-pixel centres,
    clamped at the borders, no antialiasing: ``cv2.resize`` ``INTER_LINEAR``); then ReLU, mean over layers, normalise.
    """
    size = b.op("Shape", image, start=2)
    resized = []
    for raw in raw_maps:
        m = _normalize(b, b.op("Relu", raw))
        sizes = b.op("Concat", b.op("Shape", m, end=2), size, axis=0)
        resized.append(b.op("Resize", m, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel"))
    rectified = [b.op("Relu", m) for m in resized]
    fused = (
        rectified[0] if len(rectified) == 1 else b.op("ReduceMean", b.op("Concat", *rectified, axis=1), b.const([1]))
    )
    return b.op("Squeeze", _normalize(b, fused), b.const([1]))


def method_nodes(method: str, layers: Sequence[str], image: str = contract.INPUT) -> tuple[list[onnx.NodeProto], str]:
    """Nodes computing the final map of ``method`` from ``activation:<layer>``/``gradient:<layer>``; its tensor."""
    b = Nodes(f"onnxcam/{contract.cam_name(method)}")
    raw = [_BUILDERS[method](b, contract.activation_name(x), contract.gradient_name(x)) for x in layers]
    final = add_post_processing(b, raw, image)
    return b.nodes, final


def add_cams(model: onnx.ModelProto, methods: Sequence[str], metadata: contract.Metadata) -> None:
    """Add ``cam:<method>`` outputs (each behind ``compute:cam:<method>`` and ``compute:gradients``) to an explainer
    graph and list the methods in its metadata (``onnxcam.in_graph``).

    Raises :class:`ExportError` for a detector (its maps are per box) or a single-logit binary head (the runtime flips
    the gradient's sign for the negative class).
    """
    methods = resolve(methods)
    if not methods:
        return
    if metadata.detection is not None:
        raise ExportError("--in-graph: a detector is explained per box (onnxcam detect); export without --in-graph")
    scores = next(o for o in model.graph.output if o.name == contract.SCORES)
    shape = [d.dim_value for d in scores.type.tensor_type.shape.dim[1:]]
    if is_binary(metadata.scores_kind, shape):
        raise ExportError(
            "--in-graph: a single-logit binary head needs the negative class's sign flip done by the Python "
            "runtime; export without --in-graph"
        )
    image = next(i for i in model.graph.input if i.name == contract.INPUT)
    dims = [d.dim_value or d.dim_param or None for d in image.type.tensor_type.shape.dim]
    for method in methods:
        nodes, final = method_nodes(method, metadata.layers)
        name = contract.cam_name(method)
        info = helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims[2:]])
        gate(model.graph, Part(contract.switch_name(name), True, nodes, [(final, info)], contract.GRADIENTS_SWITCH))
    props = {p.key: p.value for p in model.metadata_props}
    props[contract.META_IN_GRAPH] = json.dumps(list(methods))
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    large_protos.check_model(model, full_check=True)


#: Largest difference allowed at export between a ``cam:<method>`` output and the Python runtime's math on the same
#: activations and gradients (the tests hold them to 1e-5 on small models).
CHECK_TOLERANCE = 1e-4


def check_cams(model: onnx.ModelProto, metadata: contract.Metadata, batch: int = 2) -> float:
    """Run ``model`` once on random images and compare every ``cam:<method>`` with :mod:`onnxcam.methods` +
    :func:`onnxcam.postprocess.postprocess` on the activations and gradients of the same run; return the largest
    difference. A graph with a unit layer (metadata ``onnxcam.unit``) runs again with a random non-zero ``unit_seed``
    per image: its maps are then the unit's (:mod:`onnxcam.units`). Raises :class:`ExportError` above
    :data:`CHECK_TOLERANCE`, or when a layer's gradient is zero for a unit (a layer after the unit layer: the Python
    runtime refuses that map, so the graph would show an empty one).
    """

    size = metadata.preprocess.input_size
    batch = check_batch(model, batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, metadata.preprocess.channels, *size)).astype(np.float32)
    session = large_protos.session(model)  # errors only: the optional inputs' defaults are initializers, by design
    feeds = {contract.INPUT: x, contract.TARGET: np.full(batch, -1)}
    worst = _compare_cams(session, metadata, feeds)
    unit = contract.Metadata.from_props({p.key: p.value for p in model.metadata_props}).unit
    if unit is not None:
        seed = rng.standard_normal((batch, *unit.shape)).astype(np.float32)
        worst = max(worst, _compare_cams(session, metadata, {**feeds, contract.UNIT_SEED: seed}, unit.layer))
    return worst


def _compare_cams(
    session: ort.InferenceSession, metadata: contract.Metadata, feeds: dict[str, np.ndarray], unit: str | None = None
) -> float:
    """The largest difference between the ``cam:<method>`` outputs at ``feeds`` and the Python runtime's maps."""
    from onnxcam.methods import get_method
    from onnxcam.postprocess import postprocess

    layers = list(metadata.layers)
    names = [f(layer) for f in (contract.activation_name, contract.gradient_name) for layer in layers]
    names += [contract.cam_name(m) for m in metadata.in_graph]
    out = dict(zip(names, session.run(names, feeds), strict=True))
    dead = next((n for n in layers if unit is not None and not out[contract.gradient_name(n)].any()), None)
    if dead is not None:
        raise ExportError(
            f"--in-graph with --unit-layer {unit}: layer '{dead}' lies after the unit layer (a unit does not depend "
            f"on it: its in-graph map of a unit would be empty); give only layers before '{unit}', or export without "
            "--in-graph"
        )
    size = metadata.preprocess.input_size
    worst = 0.0
    for method in metadata.in_graph:
        raw = [get_method(method)(out[contract.activation_name(n)], out[contract.gradient_name(n)]) for n in layers]
        error = float(np.abs(out[contract.cam_name(method)] - postprocess(raw, (size[1], size[0]))).max())
        if not error <= CHECK_TOLERANCE:
            path = " of a unit" if unit else ""
            raise ExportError(
                f"--in-graph {method}: the in-graph map{path} differs from the Python runtime's by {error:.1e} "
                f"(> {CHECK_TOLERANCE:.0e}) on random images; export without --in-graph and report this model"
            )
        worst = max(worst, error)
    return worst

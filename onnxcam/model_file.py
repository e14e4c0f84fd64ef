"""Opening an explainer graph with onnxruntime and reading its contract (no onnx package needed).

Before onnxruntime reads the file, every external-data location it names is checked to stay inside the model's folder
(:mod:`onnxcam.onnx_scan`): onnxruntime 1.32 refuses absolute and escaping paths itself, older releases may not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from . import contract
from .fixed_batch import describe as describe_batch
from .onnx_scan import ProtobufError, external_locations
from .providers import Provider
from .scores import describe as describe_scores

#: Bytes 4–8 of a model in onnxruntime's own (flatbuffer) format, which holds no external data.
ORT_FORMAT_ID = b"ORTM"


class ModelFileError(ValueError):
    """The file is missing, not ONNX, or not an onnxcam explainer graph."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str | None, ...]
    dtype: str


@dataclass(frozen=True)
class ExplainerGraph:
    """An onnxruntime session over an explainer graph and its parsed metadata."""

    session: ort.InferenceSession
    metadata: contract.Metadata
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def output(self, name: str) -> TensorSpec:
        return next(o for o in self.outputs if o.name == name)


def _specs(args: list) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(a.name, tuple(a.shape), a.type.replace("tensor(", "").rstrip(")")) for a in args)


def escaping_location(model: Path, location: str) -> bool:
    """Whether external data ``location`` of ``model`` is absolute, resolves (``..``, symlinks) outside the model's
    folder, or cannot be resolved at all (a NUL byte, a symlink loop)."""
    folder = model.resolve().parent
    try:
        return os.path.isabs(location) or not (folder / location).resolve().is_relative_to(folder)
    except (ValueError, OSError, RuntimeError):
        return True


def check_external_data(path: Path) -> None:
    """Refuse a model that is not a protobuf ModelProto, or whose external data lies outside its folder."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if data[4:8] == ORT_FORMAT_ID:
        return
    try:
        locations = external_locations(data)
    except ProtobufError as exc:
        raise ModelFileError(f"{path}: not a loadable ONNX model (not an ONNX protobuf file: {exc})") from None
    escaping = [location for location in locations if escaping_location(path, location)]
    if escaping:
        raise ModelFileError(
            f"{path}: refused: external data location {escaping[0]!r} escapes the model's folder "
            "(external data files must sit next to the model or below it)"
        )


def check_input_size(graph: ExplainerGraph, preprocess: contract.Preprocess | None = None) -> str | None:
    """Why the graph's ``input`` cannot take the preprocessed images, ``[N, C, H, W]`` with ``C`` the ``channels``
    and ``(H, W)`` the ``input_size`` of ``preprocess`` (default: the metadata's), or ``None`` when it can (a symbolic
    dimension takes any size)."""
    shape = next(i.shape for i in graph.inputs if i.name == contract.INPUT)
    spec = preprocess or graph.metadata.preprocess
    height, width = spec.input_size
    channels = spec.channels
    wanted = (channels, height, width)
    if len(shape) == 4 and all(not isinstance(d, int) or d == e for d, e in zip(shape[1:], wanted, strict=True)):
        return None
    dims = ", ".join(str(d) if isinstance(d, int) else "?" for d in shape)
    whose = "given" if preprocess else "metadata's"
    return (
        f"graph input '{contract.INPUT}' has shape [{dims}] but the {whose} preprocess input_size {height}x{width} "
        f"needs [N, {channels}, {height}, {width}]"
    )


def open_graph(
    path: str | Path, providers: list[Provider] | None = None, options: ort.SessionOptions | None = None
) -> ExplainerGraph:
    """Load ``path`` with onnxruntime and check it follows :mod:`onnxcam.contract`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    check_external_data(path)
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first})") from None
    try:
        metadata = contract.Metadata.from_props(session.get_modelmeta().custom_metadata_map)
    except (ValueError, KeyError, TypeError) as exc:  # ValueError: the contract's own message; others: bad metadata
        cause = str(exc) if type(exc) is ValueError else f"broken onnxcam metadata ({type(exc).__name__}: {exc})"
        raise ModelFileError(f"{path}: {cause}") from None
    graph = ExplainerGraph(session, metadata, _specs(session.get_inputs()), _specs(session.get_outputs()))
    expected = {contract.SCORES, contract.TARGET_USED} | {
        f(layer) for layer in metadata.layers for f in (contract.activation_name, contract.gradient_name)
    }
    missing = expected - {o.name for o in graph.outputs}
    if missing or {contract.INPUT, contract.TARGET} - {i.name for i in graph.inputs}:
        raise ModelFileError(f"{path}: breaks the onnxcam contract (missing {', '.join(sorted(missing)) or 'inputs'})")
    mismatch = check_input_size(graph)
    if mismatch is not None:
        raise ModelFileError(f"{path}: {mismatch}")
    return graph


def _score_dims(graph: ExplainerGraph) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else 0 for d in graph.output(contract.SCORES).shape[1:])


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def input_channels(p: contract.Preprocess) -> str:
    """``3 channels RGB``, ``1 channel grey``, ``4 channels (arrays only)``."""
    order = p.channel_order if p.channels in (1, 3) else "arrays only"
    return f"{p.channels} channel{'s' if p.channels > 1 else ''} {order}"


def model_input(p: contract.Preprocess) -> str:
    """What the model's own input takes (dtype, value range, layout) and how the explainer's ``input`` relates."""
    c, (h, w) = p.channels, p.input_size
    dims = f"[N, {h}, {w}, {c}]" if p.input_layout == "NHWC" else f"[N, {c}, {h}, {w}]"
    pixels = "pixels 0..255" if p.input_dtype == "uint8" else f"pixels scaled to [0, {255 * p.value_scale:.6g}]"
    inside = [
        *(["a Transpose to NHWC"] if p.input_layout == "NHWC" else []),
        *(["the uint8 input retyped to float, fed integer pixel values"] if p.input_dtype == "uint8" else []),
    ]
    note = f"; the explainer's '{contract.INPUT}' is float32 NCHW (inside: {'; '.join(inside)})" if inside else ""
    return f"{p.input_dtype} {p.input_layout} {dims}, {pixels}{note}"


def describe_detection(d: contract.Detection) -> str:
    """One line on a detector's output (``onnxcam info``)."""
    return (
        f"detector: layout {d.layout}, raw output [N, {d.shape[0]}, {d.shape[1]}] ({d.classes} classes × {d.anchors} "
        "anchors, before NMS; scores = it flattened); explain per box: onnxcam detect MODEL IMAGES"
    )


def describe(path: str | Path) -> str:
    """Human-readable summary of an explainer graph (what ``onnxcam info`` prints)."""
    g = open_graph(path)
    m = g.metadata
    p = m.preprocess

    def fmt(spec: TensorSpec) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in spec.shape)
        return f"  {spec.name:<32} {spec.dtype:<8} [{dims}]"

    lines = [
        f"{path}",
        f"contract version {m.version}; source: {m.source or '?'}; exporter: {m.exporter or '?'}",
        f"layers ({len(m.layers)}): {', '.join(m.layers)}",
        *(f"  layout of {k}: {v.describe()} (maps and head inputs are [N, C, h, w])" for k, v in m.layouts.items()),
        f"classes: {g.output(contract.SCORES).shape[1]} ({describe_scores(m.scores_kind, _score_dims(g))}"
        + (f", dense {list(g.output(contract.SCORES).shape[2:])}" if len(g.output(contract.SCORES).shape) > 2 else "")
        + "); "
        + (f"labels: {len(m.labels)} (e.g. {', '.join(m.labels[:3])}, …)" if m.labels else "labels: none"),
        f"preprocessing: resize to {p.input_size[0]}x{p.input_size[1]} (H×W, {p.resize}), {input_channels(p)}, "
        f"x = (pixel·{p.value_scale:.6g} − mean) / std, mean {_floats(p.mean)}, std {_floats(p.std)}",
        f"model input: {model_input(p)}",
        f"input gradients: {', '.join(m.input_gradients) or 'none (export with --input-gradient)'}; "
        f"head graphs: {', '.join(m.heads) or 'none'}",
        *([describe_detection(m.detection)] if m.detection else []),
        *([f"in-graph maps: {', '.join(contract.cam_name(x) for x in m.in_graph)}"] if m.in_graph else []),
        *(
            [f"unit layer: {m.unit.layer} {list(m.unit.shape)} (targets channel:C, neuron:C,Y,X, unit:K)"]
            if m.unit
            else []
        ),
        *([f"bias gradients (FullGrad): {len(m.bias_gradients)} biased layers"] if m.bias_gradients else []),
        *([f"Hessian-vector products (ShapleyCAM): {', '.join(m.hvp)}"] if m.hvp else []),
        *([describe_batch(m.fixed_batch)] if m.fixed_batch is not None else []),
        *(
            [f"scores: int8, clipped to [{m.score_limits[0]:.6g}, {m.score_limits[1]:.6g}] (gradient 0 at either end)"]
            if m.score_limits
            else []
        ),
        "inputs:",
        *map(fmt, g.inputs),
        "optional inputs (with defaults):",
        *map(fmt, _specs(g.session.get_overridable_initializers())),
        "outputs:",
        *map(fmt, g.outputs),
    ]
    return "\n".join(lines)

"""Opening an explainer graph with onnxruntime and reading its contract (no onnx package needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from . import contract


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


def open_graph(
    path: str | Path, providers: list[str] | None = None, options: ort.SessionOptions | None = None
) -> ExplainerGraph:
    """Load ``path`` with onnxruntime and check it follows :mod:`onnxcam.contract`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
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
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    graph = ExplainerGraph(session, metadata, _specs(session.get_inputs()), _specs(session.get_outputs()))
    expected = {contract.SCORES, contract.TARGET_USED} | {
        f(layer) for layer in metadata.layers for f in (contract.activation_name, contract.gradient_name)
    }
    missing = expected - {o.name for o in graph.outputs}
    if missing or {contract.INPUT, contract.TARGET} - {i.name for i in graph.inputs}:
        raise ModelFileError(f"{path}: breaks the onnxcam contract (missing {', '.join(sorted(missing)) or 'inputs'})")
    return graph


def _floats(values: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


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
        f"classes: {g.output(contract.SCORES).shape[-1]} ({m.scores_kind}); "
        + (f"labels: {len(m.labels)} (e.g. {', '.join(m.labels[:3])}, …)" if m.labels else "labels: none"),
        f"preprocessing: resize to {p.input_size[0]}x{p.input_size[1]} (H×W, {p.resize}), {p.channel_order}, "
        f"x = (pixel·{p.value_scale:.6g} − mean) / std, mean {_floats(p.mean)}, std {_floats(p.std)}",
        "inputs:",
        *map(fmt, g.inputs),
        "outputs:",
        *map(fmt, g.outputs),
    ]
    return "\n".join(lines)

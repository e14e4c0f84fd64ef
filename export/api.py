"""Python entry points of the export stage."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from onnxcam import __version__, contract

from . import onnx_prep, sources
from .assemble import build_explainer
from .autodiff.context import GradientError
from .autodiff.graph_info import GraphInfo
from .errors import ExportError
from .sources import SourceError
from .verify import Report, verify_finite_differences

__all__ = ["ExportError", "export_model", "export_onnx_file", "export_source"]

if TYPE_CHECKING:
    import torch

Log = Callable[[str], None]

#: Input gradients exported by default: none. Each one is a backward pass through the whole network; switched off it
#: costs no compute, but the forward tensors it reads stay materialised (~10 % slower CAM runs on resnet50).
DEFAULT_INPUT_GRADIENTS: tuple[str, ...] = ()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def exporter_version() -> str:
    import torch

    return f"onnxcam {__version__}; torch {torch.__version__}; onnx {onnx.__version__}"


def export_model(
    model: torch.nn.Module,
    output: str | Path | None,
    layers: Sequence[str] | None = None,
    input_size: tuple[int, int] = (224, 224),
    labels: Sequence[str] | None = None,
    mean: tuple[float, float, float] = contract.Preprocess.mean,
    std: tuple[float, float, float] = contract.Preprocess.std,
    value_scale: float = contract.Preprocess.value_scale,
    opset: int = 18,
    exporter: str = "dynamo",
    optimize: bool = True,
    verify: bool = True,
    tolerance: float = 1e-4,
    source: str = "",
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
) -> tuple[onnx.ModelProto, Report | None]:
    """Export ``model`` as an explainer graph; verify its gradients against ``torch.autograd``; write ``output``.

    ``layers`` are module names (``model.named_modules()``); none → the last 4-D feature map before pooling.
    ``input_gradients``: ReLU backward rules of the ``gradient:input[:rule]`` outputs (``standard``, ``guided``,
    ``deconvnet``; ``()`` for none). ``heads``: add the part after each layer as a head graph (Ablation-CAM).
    Returns the model and the verification report (``None`` with ``verify=False``). Nothing is written when the
    verification fails.
    """
    from .torch_capture import default_layer, to_onnx
    from .verify_torch import verify_torch

    model = model.eval()
    input_shape = (3, *input_size)
    if not layers:
        layers = [default_layer(model, input_shape)]
        log(f"no --layer given: explaining '{layers[0]}' (last 4-D feature map before pooling)")
    started = time.perf_counter()
    forward = to_onnx(model, layers, input_size, opset=opset, exporter=exporter, optimize=optimize)
    metadata = contract.Metadata(
        layers=tuple(layers),
        preprocess=contract.Preprocess(input_size=input_size, mean=mean, std=std, value_scale=value_scale),
        labels=tuple(labels) if labels else None,
        source=source or type(model).__name__,
        exporter=exporter_version(),
    )
    rules = _rules(input_gradients)
    check = (lambda e: verify_torch(e, model, layers, input_shape, rules, tolerance=tolerance)) if verify else None
    extras = Extras(rules, heads)
    return _build_check_save(forward, metadata, extras, check, "float64 torch.autograd", output, started, log)


@dataclass(frozen=True)
class Extras:
    """Optional parts of the explainer graph: input gradients (one per ReLU backward rule) and head graphs."""

    input_gradients: tuple[str, ...] = ()
    heads: bool = True


def _rules(input_gradients: Sequence[str]) -> tuple[str, ...]:
    """The ReLU backward rules asked for, checked, in contract order."""
    unknown = [r for r in input_gradients if r not in contract.RELU_RULES]
    if unknown:
        raise ExportError(f"unknown input-gradient rule '{unknown[0]}'; choose from {', '.join(contract.RELU_RULES)}")
    return tuple(r for r in contract.RELU_RULES if r in input_gradients)


def _build_check_save(
    forward: onnx.ModelProto,
    metadata: contract.Metadata,
    extras: Extras,
    check: Callable[[onnx.ModelProto], Report] | None,
    reference: str,
    output: str | Path | None,
    started: float,
    log: Log,
) -> tuple[onnx.ModelProto, Report | None]:
    """Append the backward to ``forward``, verify it against ``reference`` (raises when wrong), then write it."""
    explainer = build_explainer(forward, list(metadata.layers), metadata, extras.input_gradients, extras.heads, log=log)
    log(f"built explainer graph in {time.perf_counter() - started:.1f} s ({len(explainer.graph.node)} nodes)")
    report = check(explainer) if check else None
    if report is not None:
        log(f"verified against {reference}: {report.summary()}")
    if output is not None:
        save(explainer, output)
        log(f"wrote {output}")
    return explainer, report


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write atomically: a temporary file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        onnx.save_model(model, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def resolve_labels(labels: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``'imagenet'`` → torchvision's 1000 ImageNet class names; a path → one name per line; a list as is."""
    if labels is None or (not isinstance(labels, str) and not labels):
        return None
    if not isinstance(labels, str):
        return tuple(labels)
    if labels == "imagenet":
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return tuple(_IMAGENET_CATEGORIES)
    path = Path(labels)
    if not path.is_file():
        raise SourceError(f"labels: no such file '{labels}' (or use 'imagenet')")
    return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def export_onnx_file(
    path: str | Path,
    output: str | Path | None,
    layers: Sequence[str] | None = None,
    input_size: tuple[int, int] | None = None,
    labels: Sequence[str] | None = None,
    mean: tuple[float, float, float] = contract.Preprocess.mean,
    std: tuple[float, float, float] = contract.Preprocess.std,
    value_scale: float = contract.Preprocess.value_scale,
    opset: int = onnx_prep.MIN_OPSET,
    verify: bool = True,
    tolerance: float = 1e-4,
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
) -> tuple[onnx.ModelProto, Report | None]:
    """Explainer graph from an existing ONNX classifier; gradients checked by finite differences. No torch needed.

    ``input_gradients`` and ``heads`` as in :func:`export_model` (the layer gradients are what is verified).
    """
    started = time.perf_counter()
    forward, layers = onnx_prep.prepare(onnx_prep.load(path), layers or [], opset)
    log(f"explaining tensor(s) {', '.join(layers)}")
    shape = GraphInfo(forward).shape(contract.INPUT) or ()
    spatial = tuple(d for d in shape[2:4] if isinstance(d, int))
    size = input_size or (spatial if len(spatial) == 2 else (224, 224))
    channels = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else 3
    metadata = contract.Metadata(
        layers=tuple(layers),
        preprocess=contract.Preprocess(input_size=tuple(size), mean=mean, std=std, value_scale=value_scale),
        labels=tuple(labels) if labels else None,
        source=Path(path).name,
        exporter=f"onnxcam {__version__}; onnx {onnx.__version__}",
    )
    check = (lambda e: verify_finite_differences(e, layers, (channels, *size), tolerance=tolerance)) if verify else None
    extras = Extras(_rules(input_gradients), heads)
    try:
        return _build_check_save(forward, metadata, extras, check, "float64 finite differences", output, started, log)
    except GradientError as exc:  # a rule needs static sizes (Resize): pin the dynamic H/W, say so, build again
        sizes_needed = "unknown at export" in str(exc) or "static" in str(exc)
        pinned = onnx_prep.pin_spatial(forward, size) if sizes_needed else None
        if pinned is None:
            raise
        log(f"dynamic H/W pinned to {size[0]}×{size[1]} (--input-size) for {str(exc).partition(':')[0]}")
        return _build_check_save(pinned, metadata, extras, check, "float64 finite differences", output, started, log)


def export_source(
    source: str,
    layers: Sequence[str],
    output: str | Path,
    input_size: tuple[int, int] | None = None,
    opset: int = 18,
    weights: str | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    labels: str | None = None,
    exporter: str = "dynamo",
    no_verify: bool = False,
    tolerance: float = 1e-4,
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
) -> tuple[onnx.ModelProto, Report | None]:
    """What ``onnxcam export`` does: resolve SOURCE, apply recipe defaults, export, verify, write."""
    preprocess = contract.Preprocess()
    if sources.is_onnx(source):
        return export_onnx_file(
            source,
            output,
            layers,
            input_size=input_size,
            labels=resolve_labels(labels),
            mean=mean or preprocess.mean,
            std=std or preprocess.std,
            opset=opset,
            verify=not no_verify,
            tolerance=tolerance,
            input_gradients=input_gradients,
            heads=heads,
            log=log,
        )
    model = sources.load_module(source, weights)
    recipe = dict(getattr(model, "onnxcam_export_info", {}))
    return export_model(
        model,
        output,
        layers=list(layers) or recipe.get("layers"),
        input_size=tuple(input_size or recipe.get("input_size", preprocess.input_size)),
        labels=resolve_labels(labels or recipe.get("labels")),
        mean=tuple(mean or recipe.get("mean", preprocess.mean)),
        std=tuple(std or recipe.get("std", preprocess.std)),
        opset=opset,
        exporter=exporter,
        verify=not no_verify,
        tolerance=tolerance,
        source=source,
        input_gradients=input_gradients,
        heads=heads,
        log=log,
    )

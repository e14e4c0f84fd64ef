"""Python entry points of the export stage."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from onnxcam import __version__, contract

from . import deploy, inputs, large_protos, memory, onnx_prep, quantization, sources
from .assemble import build_explainer, score_shape
from .autodiff.context import GradientError
from .autodiff.graph_info import GraphInfo
from .box_gradients import keep_if_exact
from .detection_layers import SCALES_REASON, detector_forward, torch_detector_layers
from .detection_output import as_detection
from .errors import ExportError
from .fixed_batch_verify import verify_in_chunks
from .in_graph import add_cams, check_cams
from .in_graph import resolve as resolve_in_graph
from .inside_normalisation import inside_normalisation
from .onnx_channels_last import onnx_layer_layout
from .precision import with_agreement
from .scores_head import ScoresHead, check_labels, resolve_head
from .source_batch import declared_batch
from .sources import SourceError
from .switched_check import OPTIONS, check_switched_parts
from .token_order import in_grid_order
from .unit_check import refuse_dead_unit_layer
from .verify import Report, verify_finite_differences
from .verify_switched import verify_switched

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
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    value_scale: float | None = None,
    opset: int = 18,
    exporter: str = "dynamo",
    optimize: bool = True,
    verify: bool = True,
    tolerance: float = 1e-4,
    source: str = "",
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
    scores_kind: str | None = None,
    scores_from: str | int | None = None,
    channels: int | None = None,
    channel_order: str | None = None,
    input_layout: str | None = None,
    task: str | None = None,
    detect_layout: str | None = None,
    layer_layout: str | None = None,
    layer_grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    in_graph: Sequence[str] = (),
    unit_layer: str | None = None,
    precision: str | None = None,
    calibration: str | Path | np.ndarray | None = None,
    bias_gradients: bool = False,
    hvp: bool = False,
) -> tuple[onnx.ModelProto, Report | None]:
    """Export ``model`` as an explainer graph; verify its gradients against ``torch.autograd``; write ``output``.

    ``layers`` are module names (``model.named_modules()``; ``name#k`` = the k-th call of a module that runs more
    than once); none → the layer a practitioner would pick (:func:`export.layer_choice.choose_default`).
    ``input_gradients``: ReLU backward rules of the ``gradient:input[:rule]`` outputs (``standard``, ``guided``,
    ``deconvnet``; ``()`` for none). ``heads``: add the part after each layer as a head graph (Ablation-CAM).
    ``bias_gradients``: add FullGrad's ``bias_gradient:*`` outputs (:mod:`.bias_gradients`); ``hvp``: ShapleyCAM's
    ``hvp:<layer>`` outputs (:mod:`.hvp`).
    ``scores_kind``: what the scores are (``logits``, ``sigmoid``, ``probabilities``, ``raw``; ``None``: detected,
    :mod:`.scores_head`). ``scores_from``: which output holds them when ``forward`` returns several (name or index,
    :mod:`.scores_from`). Labels must number the classes (a binary sigmoid head: 1 or 2).
    The input (:func:`inputs.describe_input`): ``channels`` (default: the first convolution's ``in_channels``),
    ``mean``/``std`` (C values or one), ``value_scale`` (0–255 → the model's range), ``channel_order`` (RGB, BGR),
    ``input_layout`` (``NHWC`` for a model taking channels-last tensors: the graph takes NCHW and permutes).
    ``task`` (``classify``, ``detect``; ``None``: detected) and ``detect_layout`` (``yolov8``, ``yolov5``; ``None``:
    detected): a detector's raw output, :mod:`.detection_output`.
    ``layer_layout`` / ``layer_grid`` / ``prefix_tokens`` override the inferred layout of every layer (NCHW,
    channels-last, tokens ``[N, prefix + h·w, C]``; :func:`export.layouts.classify`).
    ``in_graph``: methods whose final map the graph outputs as ``cam:<method>`` (:mod:`.in_graph`).
    ``unit_layer``: a module (or, for ONNX files, tensor) whose units can be explained instead of a class
    (``unit_seed``, :mod:`onnxcam.units`).
    ``precision``: the deployed graph's (``float32``, ``float16``, ``int8``; ``None``: ``float16`` for a model whose
    weights are float16, e.g. after ``model.half()``, else ``float32``): the traced float32 graph is converted
    (:mod:`.deploy`; int8 calibrated on ``calibration``, a directory of images or a preprocessed ``N×C×H×W`` batch)
    and verified as a deployed ONNX file is (float64 finite differences, the STE reference for int8), not against
    ``torch.autograd`` of the float32 model; so is a model whose softmax/sigmoid is written out (``exp / sum``: no
    PyTorch call whose input the reference could take as the logits, :mod:`.score_activation`).
    Returns the model and the verification report (``None`` with ``verify=False``). Nothing is written when the
    verification fails.
    """
    from .layer_choice import choose_default, resolve_layouts, unreached_layers
    from .torch_capture import module_calls, to_onnx
    from .torch_input import channels_first, probe_torch, torch_channels
    from .torch_outputs import dense_classes, model_scores_name
    from .verify_torch import verify_torch

    if output is not None:
        large_protos.check_writable(output)  # before the work, not after it
    model, precision = _float_weights(model.eval(), precision, log)
    channels = channels or torch_channels(model) or 3
    preprocess = inputs.describe_input(input_size, channels, mean, std, channel_order, value_scale, layout=input_layout)
    model = channels_first(model, preprocess.input_layout)
    input_shape = (channels, *input_size)
    probe_torch(model, input_shape)
    chosen = model_scores_name(model, input_shape, scores_from)
    if chosen is not None:
        log(f"explaining the model's output '{chosen}'")
    calls = module_calls(model, input_shape, scores_from=chosen)
    if not layers:
        layers, why = torch_detector_layers(model, input_shape, chosen, task, detect_layout), SCALES_REASON
        if not layers:
            name, _, why = choose_default(model, calls, input_size, dense_classes(model, input_shape, chosen))
            layers = [name]
        log(f"no --layer given: explaining {', '.join(map(repr, layers))} ({why})")
    layouts = resolve_layouts(model, calls, layers, input_size, layer_layout, layer_grid, prefix_tokens)
    for layer in unreached_layers(calls, layouts):
        log(
            f"warning: layer '{layer}': the top-1 score's gradient is 0 at every position of its map on random "
            "images (the scores do not depend on them, e.g. a ViT head reading only the class token), so its "
            "gradient CAMs are blank; explain an earlier layer (ViT: the last block's norm1)"
        )
    del calls
    started = time.perf_counter()
    taps = [*layers, *([unit_layer] if unit_layer and unit_layer not in layers else [])]
    forward = to_onnx(
        model, taps, input_size, channels, opset=opset, exporter=exporter, optimize=optimize, scores_from=chosen
    )
    layouts = in_grid_order(forward, layouts, input_size, log, (prefix_tokens, layer_grid) != (None, None))
    for layer, layout in layouts.items():
        if layout.kind != "nchw":
            log(f"layer '{layer}' is {layout.describe()}: exposed as [N, C, h, w] inside the graph")
    forward, detection = as_detection(forward, input_shape, task, detect_layout, log)
    forward = deploy.to_precision(forward, precision, deploy.calibration_batch(calibration, preprocess))
    head = scores_head(forward, scores_kind, labels, log, detection)
    metadata = contract.Metadata(
        layers=tuple(layers),
        preprocess=preprocess,
        labels=tuple(labels) if labels else None,
        source=source or type(model).__name__,
        exporter=exporter_version(),
        scores_kind=head.kind,
        detection=detection,
        layouts={layer: layout for layer, layout in layouts.items() if layout.kind != "nchw"},
        score_limits=quantization.score_limits(forward, head.tensor),
    )
    rules = _rules(input_gradients)

    def check(explainer: onnx.ModelProto) -> Report:
        return verify_torch(
            explainer,
            model,
            layers,
            input_shape,
            rules,
            tolerance=tolerance,
            scores_from=chosen,
            skipped=head.skipped,
            layouts=layouts,
        )

    extras = Extras(rules, heads, resolve_in_graph(in_graph), unit_layer, bias_gradients, hvp)
    try:
        if precision != "float32" or head.form:  # a written-out activation: no PyTorch call to take the logits from
            deployed, reference = _deployed_check(forward, layers, input_shape, tolerance, log)
            return _build_check_save(
                forward, metadata, extras, deployed if verify else None, reference, output, started, log
            )
        return _build_check_save(  # the traced graph is not needed again: built on in place, not copied
            forward, metadata, extras, check if verify else None, "float64 torch.autograd", output, started, log, True
        )
    except GradientError as exc:  # TorchScript leaves some shapes unknown (nn.MultiheadAttention); dynamo keeps them
        if exporter == "torchscript" and "is unknown" in str(exc):
            raise GradientError(f"{exc} (traced by the torchscript exporter): try --exporter dynamo") from None
        raise


def _float_weights(model: torch.nn.Module, precision: str | None, log: Log) -> tuple[torch.nn.Module, str]:
    """A float32 copy of a float16 model (traced in float32, converted back to float16 by :mod:`.deploy`: exact, as
    float16 values are float32 values) and the precision to deploy; other models and precisions as they are."""
    import copy

    import torch

    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if torch.float16 not in dtypes:
        return model, precision or "float32"
    if precision is None:
        precision = "float16"
        log("the model's weights are float16: exporting a float16 graph (--precision float32 for a float32 one)")
    return copy.deepcopy(model).float(), precision


def _deployed_check(
    forward: onnx.ModelProto, layers: Sequence[str], shape: tuple[int, ...], tolerance: float, log: Log
) -> tuple[Callable[[onnx.ModelProto], Report], str]:
    """The check of a deployed (float16 or int8) graph and its name: float64 finite differences of the same graph,
    or of its straight-through-estimator reference for QDQ (:mod:`.quantization`), with the float16-vs-float64
    agreement logged first (:func:`.precision.with_agreement`)."""
    qdq = quantization.is_qdq(forward)
    reference = quantization.verify_ste if qdq else verify_finite_differences
    check = with_agreement(
        lambda e: verify_in_chunks(reference, e, layers, shape, tolerance), forward, layers, shape, log
    )
    return (
        check,
        "the straight-through estimator by float64 finite differences" if qdq else "float64 finite differences",
    )


def scores_head(
    forward: onnx.ModelProto,
    declared: str | None,
    labels: Sequence[str] | None,
    log: Log,
    detection: contract.Detection | None = None,
) -> ScoresHead:
    """What the forward graph's scores are (:func:`.scores_head.resolve_head`), the labels checked against them.

    A detector's scores are ``raw`` unless declared; its labels number its classes."""
    classes = score_shape(GraphInfo(forward), contract.SCORES)[0]
    head = resolve_head(forward, declared or ("raw" if detection else None), classes)
    check_labels(labels, head.kind, detection.classes if detection else classes)
    written = f", written as {head.form}," if head.form else ""
    skipped = f" (the trailing {head.skipped}{written} is left out: its input is explained)" if head.skipped else ""
    log(f"scores: {head.kind}{' (declared)' if declared else ''}{skipped}")
    return head


@dataclass(frozen=True)
class Extras:
    """Optional parts of the explainer graph: input gradients (one per ReLU backward rule), head graphs, in-graph
    maps, unit targets, FullGrad's bias gradients and ShapleyCAM's Hessian-vector products."""

    input_gradients: tuple[str, ...] = ()
    heads: bool = True
    in_graph: tuple[str, ...] = ()  # methods with a ``cam:<method>`` output (:mod:`.in_graph`)
    unit_layer: str | None = None
    bias_gradients: bool = False
    hvp: bool = False


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
    consume: bool = False,
) -> tuple[onnx.ModelProto, Report | None]:
    """Append the backward to ``forward``, verify it against ``reference`` (raises when wrong), then write it.
    ``consume``: build on ``forward`` itself (the caller never reads it again; one copy of the weights fewer)."""
    explainer = build_explainer(
        forward,
        list(metadata.layers),
        metadata,
        extras.input_gradients,
        extras.heads,
        log=log,
        unit_layer=extras.unit_layer,
        bias_gradients=extras.bias_gradients,
        hvp=extras.hvp,
        consume=consume,
    )
    keep_if_exact(explainer, metadata.layers, log)
    switched = [s for s, on in ((contract.BIAS_SWITCH, extras.bias_gradients), (contract.HVP_SWITCH, extras.hvp)) if on]
    check_switched_parts(explainer, metadata, switched)
    log(f"built explainer graph in {time.perf_counter() - started:.1f} s ({len(explainer.graph.node)} nodes)")
    memory.release_for(explainer)  # what tracing and building freed, before the float64 copies of the weights
    report = check(explainer) if check else None
    memory.release_for(explainer)
    if report is not None:
        log(f"verified against {reference}: {report.summary()}")
    if report is not None and switched and not quantization.is_qdq(explainer):
        extra = verify_switched(explainer, switched)
        log(f"verified {', '.join(OPTIONS[s] for s in switched)} against float64 finite differences: {extra.summary()}")
        report = Report({**report.errors, **extra.errors}, report.redrawn)
    if extras.unit_layer:
        refuse_dead_unit_layer(explainer, metadata, log)
    if extras.in_graph:
        add_cams(explainer, extras.in_graph, metadata)
        error = check_cams(explainer, replace(metadata, in_graph=extras.in_graph))
        maps = ", ".join(contract.cam_name(m) for m in extras.in_graph)
        log(f"in-graph maps {maps}: checked against the Python runtime's math, max difference {error:.1e}")
    if output is not None:
        large_protos.save(explainer, output)
        log(f"wrote {output}{large_protos.written_beside(explainer, output)}")
    return explainer, report


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
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    blank = next((n for n, line in enumerate(lines, 1) if not line), None)
    if blank is not None:
        raise SourceError(
            f"labels file '{labels}': line {blank} is blank; every line must name one class, in class order "
            "(a blank line would shift every later name)"
        )
    return tuple(lines)


def export_onnx_file(
    path: str | Path,
    output: str | Path | None,
    layers: Sequence[str] | None = None,
    input_size: tuple[int, int] | None = None,
    labels: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    value_scale: float | None = None,
    opset: int = onnx_prep.MIN_OPSET,
    verify: bool = True,
    tolerance: float = 1e-4,
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
    scores_kind: str | None = None,
    scores_from: str | int | None = None,
    channels: int | None = None,
    channel_order: str | None = None,
    input_layout: str | None = None,
    task: str | None = None,
    detect_layout: str | None = None,
    in_graph: Sequence[str] = (),
    unit_layer: str | None = None,
    precision: str = "float32",
    calibration: str | Path | np.ndarray | None = None,
    bias_gradients: bool = False,
    hvp: bool = False,
) -> tuple[onnx.ModelProto, Report | None]:
    """Explainer graph from an existing ONNX classifier; gradients checked by finite differences. No torch needed.

    ``input_gradients``, ``heads``, ``scores_kind``, ``task``, ``detect_layout`` as in :func:`export_model` (the
    layer gradients are what is verified); ``scores_from``: the graph output holding the scores (name or index) when
    the file has several.
    The model input's channels, size, dtype (float32 or uint8) and layout (NCHW or NHWC) are read from the file
    (:func:`inputs.read_onnx_input`; ``channels``/``input_size``/``input_layout`` where it does not say), and the
    graph is made to take float32 NCHW (:func:`inputs.to_float_nchw`). A float file that normalises its input
    itself (:mod:`.inside_normalisation`) gets no mean/std unless they are given, and the pixel range its constants
    expect; ``precision``/``calibration``: convert a float32 file to its deployed precision first
    (:mod:`.deploy`); the rest as in :func:`export_model`.
    """
    if output is not None:
        large_protos.check_writable(output)  # before the work, not after it
    started = time.perf_counter()
    user_layers = list(layers or [])
    forward = onnx_prep.prepare(onnx_prep.load(path), opset, scores_from, log)
    layers, refusal = onnx_prep.layers_or_refusal(forward, user_layers, input_size)
    forward = onnx_prep.tap_tensors(forward, layers)
    found = inputs.read_onnx_input(forward, channels, input_layout, input_size)
    size = tuple(input_size or found.size or (224, 224))
    forward = onnx_prep.pin_if_fixed(inputs.to_float_nchw(forward, found, size), size, log)
    shape = (found.channels, *size)
    forward, layers, detection = detector_forward(forward, layers, not user_layers, shape, task, detect_layout, log)
    if refusal is not None and not layers:  # no classifier default, and no detector's either
        raise refusal
    if unit_layer and unit_layer not in layers:
        forward = onnx_prep.tap_tensors(forward, [unit_layer])
    head = scores_head(forward, scores_kind, labels, log, detection)
    log(f"explaining tensor(s) {', '.join(layers)}")
    if found.dtype == "float32" and mean is None and std is None:
        mean, std, value_scale = _normalisation_defaults(forward, shape, value_scale, log)
    preprocess = inputs.describe_input(
        size, found.channels, mean, std, channel_order, value_scale, found.dtype, found.layout
    )
    if (found.dtype, found.layout) != ("float32", "NCHW"):
        log(f"model input: {found.dtype} {found.layout}; the explainer's input is float32 NCHW")
    forward = deploy.to_precision(forward, precision, deploy.calibration_batch(calibration, preprocess))
    info = GraphInfo(forward)
    layouts = {layer: onnx_layer_layout(forward, info, layer, size) for layer in layers}
    layouts = in_grid_order(forward, layouts, size, log)
    for layer, layout in layouts.items():
        if layout.kind != "nchw":
            log(f"layer '{layer}' is {layout.describe()}: exposed as [N, C, h, w] inside the graph")
    metadata = contract.Metadata(
        layers=tuple(layers),
        preprocess=preprocess,
        labels=tuple(labels) if labels else None,
        source=Path(path).name,
        exporter=f"onnxcam {__version__}; onnx {onnx.__version__}",
        scores_kind=head.kind,
        detection=detection,
        fixed_batch=declared_batch(forward),
        layouts={layer: layout for layer, layout in layouts.items() if layout.kind != "nchw"},
        score_limits=quantization.score_limits(forward, head.tensor),
    )
    deployed, reference_name = _deployed_check(forward, layers, shape, tolerance, log)
    check = deployed if verify else None
    extras = Extras(_rules(input_gradients), heads, resolve_in_graph(in_graph), unit_layer, bias_gradients, hvp)
    try:
        return _build_check_save(forward, metadata, extras, check, reference_name, output, started, log)
    except GradientError as exc:  # a rule needs static sizes (Resize): pin the dynamic H/W, say so, build again
        sizes_needed = "unknown at export" in str(exc) or "static" in str(exc)
        pinned = onnx_prep.pin_spatial(forward, size) if sizes_needed else None
        if pinned is None:
            raise
        log(f"dynamic H/W pinned to {size[0]}×{size[1]} (--input-size) for {str(exc).partition(':')[0]}")
        return _build_check_save(pinned, metadata, extras, check, reference_name, output, started, log)


def _normalisation_defaults(
    forward: onnx.ModelProto, shape: tuple[int, int, int], value_scale: float | None, log: Log
) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None, float | None]:
    """``(mean, std, value_scale)`` for a file that may normalise its input itself: none added when it does (and the
    pixel range its constants expect, unless ``value_scale`` was given), the defaults otherwise."""
    inside = inside_normalisation(forward, shape)
    if inside is None:
        return None, None, value_scale
    if value_scale is None:
        value_scale = 1.0 if inside.takes_0_255 else 1.0 / 255.0
    log(
        f"the model normalises its input itself ({' → '.join(inside.ops)} before the first Conv): no mean/std added, "
        f"pixels fed as {'0..255' if value_scale == 1.0 else f'pixel·{value_scale:.6g}'}; "
        "declare --mean/--std/--scale to override"
    )
    return (0.0,), (1.0,), value_scale


def export_source(
    source: str,
    layers: Sequence[str],
    output: str | Path,
    input_size: tuple[int, int] | None = None,
    opset: int = 18,
    weights: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    labels: str | None = None,
    exporter: str = "dynamo",
    no_verify: bool = False,
    tolerance: float = 1e-4,
    input_gradients: Sequence[str] = DEFAULT_INPUT_GRADIENTS,
    heads: bool = True,
    log: Log = _stderr,
    scores_kind: str | None = None,
    scores_from: str | None = None,
    channels: int | None = None,
    channel_order: str | None = None,
    scale: str | float | None = None,
    input_layout: str | None = None,
    task: str | None = None,
    detect_layout: str | None = None,
    layer_layout: str | None = None,
    layer_grid: tuple[int, int] | None = None,
    prefix_tokens: int | None = None,
    in_graph: Sequence[str] = (),
    unit_layer: str | None = None,
    precision: str | None = None,
    calibration: str | None = None,
    bias_gradients: bool = False,
    hvp: bool = False,
) -> tuple[onnx.ModelProto, Report | None]:
    """What ``onnxcam export`` does: resolve SOURCE, apply recipe defaults, export, verify, write.

    ``scale``: the value scale as a number or a fraction (``'1/255'``, ``1``); the input options as in
    :func:`export_model`. A recipe's ``onnxcam_export_info`` may set ``channels``, ``channel_order``, ``value_scale``
    and ``input_layout`` too (the options win).
    """
    in_graph = resolve_in_graph(in_graph)  # a method it cannot build is refused before the model is loaded
    preprocess = contract.Preprocess()
    value_scale = None if scale is None else inputs.parse_scale(scale)
    if sources.is_onnx(source):
        return export_onnx_file(
            source,
            output,
            layers,
            input_size=input_size,
            labels=resolve_labels(labels),
            mean=mean or None,
            std=std or None,
            value_scale=value_scale,
            opset=opset,
            verify=not no_verify,
            tolerance=tolerance,
            input_gradients=input_gradients,
            heads=heads,
            log=log,
            scores_kind=scores_kind,
            scores_from=scores_from,
            channels=channels,
            channel_order=channel_order,
            input_layout=input_layout,
            task=task,
            detect_layout=detect_layout,
            in_graph=in_graph,
            unit_layer=unit_layer,
            precision=precision or "float32",
            calibration=calibration,
            bias_gradients=bias_gradients,
            hvp=hvp,
        )
    model = sources.load_module(source, weights)
    recipe = dict(getattr(model, "onnxcam_export_info", {}))
    return export_model(
        model,
        output,
        layers=list(layers) or recipe.get("layers"),
        input_size=tuple(input_size or recipe.get("input_size", preprocess.input_size)),
        labels=resolve_labels(labels or recipe.get("labels")),
        mean=mean or recipe.get("mean"),
        std=std or recipe.get("std"),
        value_scale=recipe.get("value_scale") if value_scale is None else value_scale,
        opset=opset,
        exporter=exporter,
        verify=not no_verify,
        tolerance=tolerance,
        source=source,
        input_gradients=input_gradients,
        heads=heads,
        log=log,
        scores_kind=scores_kind or recipe.get("scores_kind"),
        scores_from=scores_from if scores_from is not None else recipe.get("scores_from"),
        channels=channels or recipe.get("channels"),
        channel_order=channel_order or recipe.get("channel_order"),
        input_layout=input_layout or recipe.get("input_layout"),
        task=task or recipe.get("task"),
        detect_layout=detect_layout or recipe.get("detect_layout"),
        layer_layout=layer_layout,
        layer_grid=tuple(layer_grid) if layer_grid else None,
        prefix_tokens=prefix_tokens,
        in_graph=in_graph,
        unit_layer=unit_layer,
        precision=precision,
        calibration=calibration,
        bias_gradients=bias_gradients,
        hvp=hvp,
    )

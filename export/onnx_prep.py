"""Bring an ONNX classifier from any exporter into the shape the explainer builder expects.

Real-world files are messy; this module normalises them: weights listed as graph inputs (legacy IR 3), opsets older
than 18 (upgraded without changing the model, :mod:`.onnx_upgrade`; ``Upsample`` becomes ``Resize``), a fixed batch
size (made dynamic when that is exact, else kept: :mod:`.source_batch`), any input/output names (renamed to the
contract's), several outputs (the scores chosen by ``scores_from`` or by shape, :mod:`.scores_from`; the others
dropped). The tapped tensors are renamed ``activation:<tensor>`` so they become graph outputs in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import onnx

from onnxcam import contract

from . import large_protos
from .autodiff.graph_info import GraphInfo
from .errors import ExportError
from .float16_casts import refuse_mistyped_casts
from .inputs import read_onnx_input
from .layers import LayerError, nearest_names
from .onnx_channels_last import before_final_norm
from .onnx_token_layer import random_input, token_default
from .onnx_upgrade import upgrade
from .precision import float32_io
from .quantization import refuse_qoperator
from .scores_from import choose_output
from .source_batch import choose_batch, declared_batch

MIN_OPSET = 18


class OnnxSourceError(ExportError):
    """The ONNX file cannot be read or normalised."""


def load(path: str | Path) -> onnx.ModelProto:
    """The ONNX file at ``path`` with its external data (read from the file's folder); :class:`OnnxSourceError` in one
    line when it is no ONNX model, or when its external data cannot be read (a weights file left behind in a copy)."""
    try:
        return onnx.load(str(path))
    except Exception as exc:
        reason = _unreadable_external_data(path, exc) or f"not an ONNX model ({type(exc).__name__})"
        raise OnnxSourceError(f"{path}: {reason}") from None


def _unreadable_external_data(path: str | Path, exc: Exception) -> str | None:
    """Why ``onnx.load`` failed (``exc``) when ``path`` is an ONNX graph whose initializers are external data;
    ``None`` when it is not (then the file itself is the problem)."""
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return None
    locations = sorted({e.value for t in graph.initializer for e in t.external_data if e.key == "location"})
    if not locations:
        return None
    named = ", ".join(locations[:3]) + (f" and {len(locations) - 3} more" if len(locations) > 3 else "")
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    return (
        f"its weights are external data ({named}) that cannot be read beside it ({detail}); copy the data file(s) "
        "with the model, at the locations it names relative to its folder"
    )


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        if vi.name == old:
            vi.name = new


def pin_if_fixed(model: onnx.ModelProto, size: Sequence[int], log: Callable[[str], None]) -> onnx.ModelProto:
    """``model`` (float NCHW ``input``), its dynamic H×W pinned to ``size`` when the graph does not run at twice that
    size (a trace that baked its size in, e.g. a ViT's position-embedding size): the explainer then takes ``size``
    only, and the log says why; unchanged when it runs (or H×W are static)."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or all(d.HasField("dim_value") for d in dims[2:]):
        return model
    other = (2 * size[0], 2 * size[1])
    try:
        large_protos.session(model).run(None, {contract.INPUT: random_input(model, other)})
    except Exception as exc:  # any failure at another size: the file runs at its traced size only
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        log(
            f"the file declares a dynamic H/W but does not run at {other[0]}×{other[1]} ({first[:160]}): H/W pinned "
            f"to {size[0]}×{size[1]}; images are resized to it (keep-size is not available)"
        )
        return pin_spatial(model, size) or model
    return model


def pin_spatial(model: onnx.ModelProto, size: Sequence[int]) -> onnx.ModelProto | None:
    """Copy of ``model`` with the input's symbolic H and W fixed to ``size`` (shapes re-inferred from there); ``None``
    when they are already static. For rules that build matrices at export (``Resize``): the runtime resizes every
    image to the metadata's input size anyway."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4 or all(d.HasField("dim_value") for d in dims[2:]):
        return None
    pinned = onnx.ModelProto()
    pinned.CopyFrom(model)
    for dim, value in zip(pinned.graph.input[0].type.tensor_type.shape.dim[2:], size, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(value)
    del pinned.graph.value_info[:]
    return pinned


def default_tensor(model: onnx.ModelProto, input_size: tuple[int, int] | None = None) -> str:
    """The last 4-D float tensor with more than one spatial position on the way to ``scores`` (in an int8 QDQ graph
    a dequantized one; integer tensors never); for a dense output ``[N, K, H, W]``, the last one before the class
    maps (never the output, nor a map with its ``K`` channels). A pooled vector is skipped in either layout:
    ``[N, C, 1, 1]`` and channels-last ``[N, 1, 1, C]`` (ConvNeXt's head LayerNorm), and so is a tensor whose first
    dim is static or whose batch ``N`` is not first (attention's ``[L, N, heads, d]`` in TorchScript exports of ViT);
    in a graph kept at a fixed batch ``B`` (:mod:`.source_batch`), a tensor whose first dim is not ``B``.
    Where LayerNorms over tokens ``[N, T, C]`` follow the last such map (a ViT), the token tensor of the last block
    (:func:`.onnx_token_layer.token_default`; ``input_size`` splits its tokens into a grid). Where the last map is a
    channels-last Swin's final LayerNorm (or its permute to NCHW), the last stage's output before it
    (:func:`.onnx_channels_last.before_final_norm`)."""
    info = GraphInfo(model)
    batch = declared_batch(model)
    out = info.shape(contract.SCORES) or ()
    dense = len(out) == 4 and not (isinstance(out[2], int) and isinstance(out[3], int) and out[2] * out[3] <= 1)
    classes = out[1] if dense else None
    needed = {contract.SCORES}
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            needed.update(node.input)
    candidates = [
        (index, o)
        for index, node in enumerate(model.graph.node)
        for o in node.output
        if o in needed
        and info.dtype(o).kind == "f"
        and (s := info.shape(o)) is not None
        and len(s) == 4
        and (s[0] == batch if batch is not None else not isinstance(s[0], int))
        and "N" not in s[1:]
        and not _single_position(s[2], s[3])
        and not _single_position(s[1], s[2])
        and not (dense and (o == contract.SCORES or s[1] == classes))
    ]
    tokens = token_default(model, info, needed, candidates[-1][0] if candidates else -1, input_size)
    if tokens is not None:
        return tokens[0]
    if not candidates:
        raise LayerError("<default>", [], "no 4-D feature map found on the way to the output; name one with --layer")
    size = tuple(input_size or read_onnx_input(model).size or (224, 224))
    return before_final_norm(model, info, candidates[-1][1], size)  # type: ignore[arg-type]


def _single_position(h: int | str | None, w: int | str | None) -> bool:
    """Whether static dims ``h × w`` hold at most one position."""
    return isinstance(h, int) and isinstance(w, int) and h * w <= 1


def _declared_shape(output: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    tensor = output.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)


def prepare(
    model: onnx.ModelProto,
    opset: int = MIN_OPSET,
    scores_from: str | int | None = None,
    log: Callable[[str], None] | None = None,
) -> onnx.ModelProto:
    """Normalised forward graph: input ``input``, output ``scores`` (no layer tapped yet: :func:`tap_tensors`).

    ``scores_from``: the graph output holding the scores (name or index); ``None`` → the only one, or the only one
    shaped like scores.
    """
    refuse_qoperator(model)
    refuse_mistyped_casts(model)
    graph = model.graph
    weights = {t.name for t in graph.initializer}
    data_inputs = [i for i in graph.input if i.name not in weights]
    if len(data_inputs) != 1:
        raise OnnxSourceError(f"expected one image input, found {len(data_inputs)}: {[i.name for i in data_inputs]}")
    del graph.input[:]
    graph.input.extend(data_inputs)
    model.ir_version = max(model.ir_version, 4)  # IR 3 requires every initializer to be a graph input
    if not graph.output:
        raise OnnxSourceError("the model has no outputs")
    outputs = [(o.name, _declared_shape(o)) for o in graph.output]
    chosen = onnx.ValueInfoProto()
    chosen.CopyFrom(graph.output[choose_output(outputs, scores_from, "the ONNX file has")])
    del graph.output[:]
    graph.output.append(chosen)
    model = upgrade(model, max(opset, MIN_OPSET))
    graph = model.graph
    _rename(graph, graph.input[0].name, contract.INPUT)
    _rename(graph, graph.output[0].name, contract.SCORES)
    float32_io(model)
    return choose_batch(model, log)


def layers_or_refusal(
    model: onnx.ModelProto, layers: Sequence[str], input_size: tuple[int, int] | None = None
) -> tuple[list[str], LayerError | None]:
    """``layers``, else the classifier default ``[default_tensor(model, input_size)]``; where there is none,
    ``([], refusal)``: a detector's defaults are its neck's scales (:func:`.detection_layers.detector_forward`), so
    the refusal is raised only once the graph turns out not to be a detector's (a detector's output reshaped to
    ``[N, D, A]`` reads as tokens to :func:`default_tensor`)."""
    try:
        return list(layers) or [default_tensor(model, input_size)], None
    except LayerError as refusal:
        return [], refusal


def tap_tensors(model: onnx.ModelProto, layers: Sequence[str]) -> onnx.ModelProto:
    """Rename each tensor of ``layers`` ``activation:<tensor>`` and make it a graph output (in place; returned).

    Raises :class:`LayerError` (with the nearest names) for a tensor the graph does not compute."""
    graph = model.graph
    produced = [o for node in graph.node for o in node.output]
    for layer in layers:
        if layer not in produced:
            raise LayerError(layer, nearest_names(layer, produced))
    for layer in layers:
        _rename(graph, layer, contract.activation_name(layer))
    info = GraphInfo(model)
    for layer in layers:
        tap = contract.activation_name(layer)
        elem = onnx.helper.np_dtype_to_tensor_dtype(info.dtype(tap))
        graph.output.append(onnx.helper.make_tensor_value_info(tap, elem, info.shape(tap)))
    return model

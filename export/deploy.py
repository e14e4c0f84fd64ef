"""Convert an exported float32 forward graph to the precision it is deployed in (``--precision``), as deployments do.

- ``float16``: onnxconverter-common's ``convert_float_to_float16`` (every float tensor, weights included; its
  ``Cast(to=FLOAT)`` nodes blocked, :mod:`.float16_casts`), then float32 ``input``/``scores`` at the contract's edges
  (:func:`.precision.float32_io`); the taps stay float16.
- ``int8``: onnxruntime's static quantization in QDQ format (``quant_pre_process`` then ``quantize_static``: uint8
  activations, int8 weights per output channel, MinMax ranges over the calibration images, as onnxruntime recommends
  for CPUs). A tap that is a graph output keeps its name on the dequantized value, the one the next layer reads.

The converted graph is then explained and verified like a deployed ONNX file (float64 finite differences; the
straight-through-estimator reference for int8, :mod:`.quantization`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxcam import contract
from onnxcam.images import ImageError, read_image
from onnxcam.inputs import is_image_name
from onnxcam.preprocess import preprocess_batch

from . import large_protos
from .autodiff.engine import downstream
from .errors import ExportError
from .float16_casts import float32_casts
from .precision import float32_io
from .quantization import is_qdq

PRECISIONS = ("float32", "float16", "int8")


class PrecisionError(ExportError):
    """The deployed precision cannot be produced (unknown name, no calibration images, converter missing)."""


def calibration_batch(calibration: str | Path | np.ndarray | None, spec: contract.Preprocess) -> np.ndarray | None:
    """Calibration images as the graph's ``input`` (``N×C×H×W`` float32): an array as is, or every image file of a
    directory (sorted by name) preprocessed by ``spec`` exactly as the runtime does. ``None`` stays ``None``."""
    if calibration is None or isinstance(calibration, np.ndarray):
        return calibration
    folder = Path(calibration)
    if not folder.is_dir():
        raise PrecisionError(f"--calibration: '{folder}' is not a directory of images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p))
    if not files:
        raise PrecisionError(f"--calibration: no image files in '{folder}'")
    try:
        return preprocess_batch([read_image(p) for p in files], spec)
    except ImageError as exc:
        raise PrecisionError(f"--calibration: {exc}") from None


def to_precision(forward: onnx.ModelProto, precision: str, calibration: np.ndarray | None) -> onnx.ModelProto:
    """``forward`` (float32, contract names) converted to ``precision`` (:data:`PRECISIONS`); int8 needs
    ``calibration`` (``N×C×H×W`` float32, the preprocessed images whose value ranges set the quantization scales)."""
    if precision not in PRECISIONS:
        raise PrecisionError(f"unknown precision '{precision}'; choose from {', '.join(PRECISIONS)}")
    if precision != "float32" and (reduced := _reduced(forward)):
        raise PrecisionError(f"--precision {precision}: the model is {reduced} already; export it without --precision")
    if precision == "float16":
        return _float16(forward)
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise PrecisionError(
                "--precision int8 needs calibration images (--calibration DIR, a few hundred typical inputs): "
                "they set the quantization ranges"
            )
        return _int8_qdq(forward, calibration)
    return forward


def _reduced(model: onnx.ModelProto) -> str | None:
    """``'int8 (QDQ)'`` or ``'float16'`` when ``model`` is already in a deployed precision, else ``None``."""
    if is_qdq(model):
        return "int8 (QDQ)"
    half = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return "float16" if any(t.data_type in half for t in model.graph.initializer) else None


def _float16(forward: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise PrecisionError(
            "--precision float16 needs onnxconverter-common: pip install onnxconverter-common"
        ) from None
    large = large_protos.is_large(forward)
    if large:  # the converter's own shape inference serializes the graph: infer here, convert without it
        forward = large_protos.infer_shapes(forward)
    model = float16.convert_float_to_float16(forward, node_block_list=float32_casts(forward), disable_shape_infer=large)
    float32_io(model)
    return model


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over a batch, one image at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._feeds = iter([{contract.INPUT: images[i : i + 1]} for i in range(len(images))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _int8_qdq(forward: onnx.ModelProto, calibration: np.ndarray) -> onnx.ModelProto:
    if large_protos.is_large(forward):
        raise PrecisionError(
            "--precision int8: the graph is over protobuf's 2 GiB limit, which onnxruntime's quantization tools do "
            "not take in memory; quantize the ONNX file with onnxruntime.quantization.quantize_static "
            "(use_external_data_format=True) and export that file"
        )
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="onnxcam-int8-") as tmp:
        prepared, quantized = Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        try:
            quant_pre_process(forward, str(prepared))
        except Exception:  # its symbolic shape inference gives up on some graphs (a Resize of a dynamic batch)
            quant_pre_process(forward, str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            _Calibration(np.ascontiguousarray(calibration, np.float32)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=decode_tail(onnx.load(str(prepared))),
        )
        return onnx.load(str(quantized))


#: Ops with weights: a detector's decode (box arithmetic, the output Concat) is what comes after the last of them.
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def decode_tail(forward: onnx.ModelProto) -> list[str]:
    """Names of a detector's decode nodes (after its last weighted layers: ``Sigmoid``, anchor-grid ``Add``,
    stride ``Mul``, ``Exp``, the output ``Concat`` …), to keep in float; ``[]`` for a graph that is not a detector's
    (:func:`.detection_output.as_detection` names its output ``onnxcam/detection``).

    Quantized, the output ``Concat`` shares one scale between box coordinates (hundreds of pixels) and class scores
    in [0, 1], whose step then exceeds 0.2: deployments keep the decode in float (Ultralytics' int8 exports ignore it).
    """
    graph = forward.graph
    if not any(n.name == "onnxcam/detection" for n in graph.node):
        return []
    feeds: set[str] = set()  # tensors from which a weighted layer is reached
    for node in reversed(graph.node):
        if node.op_type in _WEIGHTED or any(o in feeds for o in node.output):
            feeds.update(node.input)
    weighted = downstream(graph, [o for n in graph.node if n.op_type in _WEIGHTED for o in n.output])
    tail = [n for n in graph.node if not any(o in feeds for o in n.output) and any(i in weighted for i in n.input)]
    return [n.name for n in tail if n.name]  # an unnamed node cannot be excluded (exporters name them all)

"""What a model's input takes (channels, pixel dtype, layout, size), and the explainer's ``input`` built from it.

Read from the model where it says so: an ONNX file's input type and shape (a ``[N, H, W, C]`` shape with ``C`` in
1, 3, 4, or a ``Transpose`` to NCHW at the start, is channels-last), a PyTorch model's first convolution's
``in_channels``. Declared where it does not (``--channels``, ``--input-layout``, ``--channel-order``, ``--scale``,
``--mean``/``--std``); a declaration the model contradicts is refused in one line.

The explainer graph's ``input`` is float32 ``[N, C, H, W]`` whatever the model takes, so that every runtime method
(masks, noise, paths, input gradients ``[N, C, H, W]``) works on one layout: a channels-last model gets a
``Transpose`` (NCHW → NHWC) in front of it, and a uint8 input is retyped to float32 (the runtime feeds the integer
pixel values 0–255 as float32; a ``Cast`` to float that follows becomes the identity, so the gradient w.r.t. the
input is defined, per 0–255 pixel unit). :class:`onnxcam.contract.Preprocess` records the model's own dtype and layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import onnx
from onnx import TensorProto, helper

from onnxcam import contract

from . import large_protos
from .autodiff.graph_info import GraphInfo
from .errors import ExportError


class InputError(ExportError):
    """The model's input cannot be described, or contradicts what was declared."""


#: ONNX element types of a model input, by the names :class:`onnxcam.contract.Preprocess` uses.
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}
TO_NHWC = (0, 2, 3, 1)
_TO_NCHW = (0, 3, 1, 2)
#: Name the model's own input tensor gets when the explainer's ``input`` is put in front of it.
MODEL_INPUT = "input:model"


@dataclass(frozen=True)
class ModelInput:
    """What the model's graph input takes: ``channels``, ``(H, W)`` (``None`` when dynamic), dtype and layout."""

    channels: int
    size: tuple[int, int] | None
    dtype: str
    layout: str


def parse_scale(text: str | float) -> float:
    """``'1/255'``, ``'0.00392'`` or ``1`` → a positive float; anything else raises :class:`InputError`."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError):
        raise InputError(f"--scale: expected a number or a fraction such as 1/255, got '{text}'") from None
    if value <= 0:
        raise InputError(f"--scale: must be positive, got '{text}'")
    return value


def consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if name in node.input]


def _starts_with_transpose(model: onnx.ModelProto, perm: tuple[int, ...]) -> bool:
    users = consumers(model, contract.INPUT)
    return bool(users) and all(
        n.op_type == "Transpose" and tuple(helper.get_attribute_value(a) for a in n.attribute) == (list(perm),)
        for n in users
    )


def _layout(dims: Sequence[int | str | None], model: onnx.ModelProto) -> str:
    """``NHWC`` when the input starts with a Transpose to NCHW, or its last dim looks like channels and dim 1 not."""
    if _starts_with_transpose(model, _TO_NCHW):
        return "NHWC"
    channels_like = (1, 3, 4)
    return "NHWC" if dims[3] in channels_like and dims[1] not in channels_like else "NCHW"


def read_onnx_input(
    model: onnx.ModelProto,
    channels: int | None = None,
    layout: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> ModelInput:
    """The model input of a normalised forward graph (input named ``input``), with the declarations checked."""
    value = next(i for i in model.graph.input if i.name == contract.INPUT)
    tensor = value.type.tensor_type
    dims: list[int | str | None] = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    ]
    if not tensor.HasField("shape"):  # no shape recorded: everything as declared, or the defaults
        dims = [None] * 4
    if len(dims) != 4:
        raise InputError(f"the model's input has shape {dims}; onnxcam explains images [N, C, H, W] or [N, H, W, C]")
    layout = (layout or _layout(dims, model)).upper()
    if layout not in contract.INPUT_LAYOUTS:
        raise InputError(f"--input-layout: choose {' or '.join(contract.INPUT_LAYOUTS)}, got '{layout}'")
    c_dim, spatial = (dims[3], dims[1:3]) if layout == "NHWC" else (dims[1], dims[2:4])
    if isinstance(c_dim, int) and channels is not None and channels != c_dim:
        raise InputError(
            f"--channels {channels}: the model's input {layout} {_dims(dims)} "
            f"has {c_dim} channel{'s' if c_dim != 1 else ''}"
            + ("; a channels-last input? add --input-layout NHWC" if layout == "NCHW" and dims[3] == channels else "")
        )
    size = tuple(spatial) if all(isinstance(d, int) for d in spatial) else None
    if size is not None and input_size is not None and tuple(input_size) != size:
        raise InputError(
            f"--input-size {input_size[0]} {input_size[1]}: the model's input {layout} {_dims(dims)} "
            f"takes {size[0]}x{size[1]} (H×W)"
        )
    return ModelInput(
        channels=c_dim if isinstance(c_dim, int) else (channels or 3),
        size=size,
        dtype=_DTYPES.get(tensor.elem_type) or TensorProto.DataType.Name(tensor.elem_type).lower(),
        layout=layout,
    )


def _dims(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"


def to_float_nchw(model: onnx.ModelProto, found: ModelInput, size: tuple[int, int]) -> onnx.ModelProto:
    """Rewrite the forward graph so that ``input`` is float32 ``[N, C, H, W]`` (see the module docstring); an input
    without a recorded shape gets the one declared (``size`` is ``(H, W)``).

    A uint8 input feeding an op that cannot take float raises :class:`InputError`.
    """
    graph = model.graph
    value = next(i for i in graph.input if i.name == contract.INPUT)
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        dims = ["N", *size, found.channels] if found.layout == "NHWC" else ["N", found.channels, *size]
        tensor.shape.CopyFrom(helper.make_tensor_value_info("", tensor.elem_type, dims).type.tensor_type.shape)
        _infer_output_shapes(model)
    if found.layout == "NCHW" and found.dtype != "uint8":
        return model
    dims = list(tensor.shape.dim)
    if found.layout == "NHWC":
        for node in graph.node:
            node.input[:] = [MODEL_INPUT if i == contract.INPUT else i for i in node.input]
        graph.node.insert(0, helper.make_node("Transpose", [contract.INPUT], [MODEL_INPUT], perm=list(TO_NHWC)))
        nchw = [dims[i] for i in _TO_NCHW]
        tensor.shape.ClearField("dim")
        tensor.shape.dim.extend(nchw)
    if found.dtype == "uint8":
        tensor.elem_type = TensorProto.FLOAT
        try:
            large_protos.infer_shapes(model, weights=False, check_type=True, strict_mode=True)
        except onnx.shape_inference.InferenceError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(
                f"the model's uint8 input feeds an op that cannot take float pixels ({first}); "
                "onnxcam needs a Cast to float before any arithmetic"
            ) from None
    return model


def _infer_output_shapes(model: onnx.ModelProto) -> None:
    """Give the graph outputs without a shape the one inferred from the input's."""
    info = GraphInfo(model)
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and (shape := info.shape(out.name)) is not None:
            out.type.tensor_type.shape.CopyFrom(
                helper.make_tensor_value_info("", out.type.tensor_type.elem_type, shape).type.tensor_type.shape
            )


def describe_input(
    input_size: tuple[int, int],
    channels: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channel_order: str | None = None,
    value_scale: float | None = None,
    dtype: str = "float32",
    layout: str | None = "NCHW",
) -> contract.Preprocess:
    """The :class:`onnxcam.contract.Preprocess` of a model input; ``None`` → the defaults: scale 1/255, ImageNet
    mean/std and RGB for 3 channels; mean 0, std 1 (pixels in [0, 1]) otherwise, grey for one channel. A uint8
    input takes raw pixels: scale 1, mean 0, std 1, and nothing else.
    Inconsistent settings raise :class:`InputError`.
    """
    default = contract.Preprocess()
    if dtype == "uint8":
        given = [
            name
            for name, values, raw in (("--mean", mean, 0.0), ("--std", std, 1.0), ("--scale", value_scale, 1.0))
            if values is not None and any(float(v) != raw for v in ([values] if name == "--scale" else values))
        ]
        if given:
            raise InputError(
                f"{given[0]}: the model's input is uint8, so it takes raw pixels 0..255 (its normalisation is inside "
                "the graph); leave out --mean/--std/--scale"
            )
        mean, std, value_scale = (0.0,), (1.0,), 1.0
    if channels != 3:  # ImageNet's per-channel values mean nothing for other channel counts: [0, 1] as is
        mean, std = (0.0,) if mean is None else mean, (1.0,) if std is None else std
    order = (channel_order or ("grey" if channels == 1 else "RGB")).upper()
    try:
        return contract.Preprocess(
            input_size=(int(input_size[0]), int(input_size[1])),
            mean=tuple(float(v) for v in (mean if mean is not None else default.mean)),
            std=tuple(float(v) for v in (std if std is not None else default.std)),
            channel_order="grey" if order == "GREY" else order,
            value_scale=default.value_scale if value_scale is None else float(value_scale),
            channels=int(channels),
            input_dtype=dtype,
            input_layout=(layout or "NCHW").upper(),
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None

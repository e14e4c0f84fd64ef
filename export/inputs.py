"""What a model's input takes (channels, pixel dtype, layout, size), and the explainer's ``input`` built from it.

Read from the model where it says so: an ONNX file's input type and shape (a ``[N, H, W, C]`` shape with ``C`` in
1, 3, 4, or a ``Transpose`` to NCHW at the start, is channels-last), a PyTorch model's first convolution's
``in_channels``. Declared where it does not (``--channels``, ``--input-layout``, ``--channel-order``, ``--scale``,
``--mean``/``--std``); a declaration the model contradicts is refused in one line.

The explainer graph's ``input`` is float32 ``[N, C, H, W]`` whatever the model takes, so that every runtime method
(masks, noise, paths, input gradients ``[N, C, H, W]``) works on one layout: a channels-last model gets a
``Transpose`` (NCHW → NHWC) in front of it, and a uint8 input is retyped to float32 (its pixels arrive as float
values 0–255, rounded to integers by the runtime; a ``Cast`` to float that follows becomes the identity, so the
gradient w.r.t. the input is defined). :class:`onnxcam.contract.Preprocess` records the model's own dtype and layout.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto, helper

from onnxcam import contract

from .autodiff.graph_info import GraphInfo
from .errors import ExportError

if TYPE_CHECKING:
    from torch import nn


class InputError(ExportError):
    """The model's input cannot be described, or contradicts what was declared."""


#: ONNX element types of a model input, by the names :class:`onnxcam.contract.Preprocess` uses.
_DTYPES = {TensorProto.FLOAT: "float32", TensorProto.UINT8: "uint8"}
_TO_NHWC = (0, 2, 3, 1)
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


def _consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if name in node.input]


def _starts_with_transpose(model: onnx.ModelProto, perm: tuple[int, ...]) -> bool:
    users = _consumers(model, contract.INPUT)
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
        dtype=_DTYPES.get(tensor.elem_type, helper.tensor_dtype_to_np_dtype(tensor.elem_type).name),
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
        graph.node.insert(0, helper.make_node("Transpose", [contract.INPUT], [MODEL_INPUT], perm=list(_TO_NHWC)))
        nchw = [dims[i] for i in _TO_NCHW]
        tensor.shape.ClearField("dim")
        tensor.shape.dim.extend(nchw)
    if found.dtype == "uint8":
        tensor.elem_type = TensorProto.FLOAT
        try:
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        except onnx.shape_inference.InferenceError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(
                f"the model's uint8 input feeds an op that cannot take float pixels ({first}); "
                "onnxcam needs a Cast to float before any arithmetic"
            ) from None
    return model


#: Ops a normalisation at the start of a graph is made of (with constant operands), and ops passing it through.
_AFFINE_OPS = frozenset({"Sub", "Div", "Mul", "Add"})
_PASS_OPS = frozenset({"Transpose", "Cast", "Identity"})


@dataclass(frozen=True)
class InsideNormalisation:
    """A normalisation the model applies itself before its first ``Conv``: ``ops`` in order, the per-channel affine
    map ``a·x + b`` they compute on the explainer's input, and the pixel range that map expects."""

    ops: tuple[str, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def takes_0_255(self) -> bool:
        """Whether the map expects pixels 0–255: its mean pixel ``−b/a`` lies above 1.5, or its gain below 0.1
        (``x/255``, ``(x − 127.5)/127.5``, Caffe's ``x − 104``), rather than [0, 1] (``(x − 0.485)/0.229``,
        ``2x − 1``)."""
        means = [abs(b / a) for a, b in zip(self.a, self.b, strict=True) if a != 0]
        return max(means, default=0.0) > 1.5 or max(abs(a) for a in self.a) < 0.1


def inside_normalisation(model: onnx.ModelProto, shape: tuple[int, int, int]) -> InsideNormalisation | None:
    """The normalisation at the start of a float32 NCHW forward graph (``input`` → Transpose/Cast → Sub/Div/Mul/Add
    with constants → ``Conv``), measured with onnxruntime on inputs of 0s and 1s of ``shape`` ``(C, H, W)``; ``None``
    when the graph does not start so."""
    import numpy as np
    import onnxruntime as ort

    graph = model.graph
    constants = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    name, chain = contract.INPUT, []
    while len(users := _consumers(model, name)) == 1:
        node = users[0]
        affine = node.op_type in _AFFINE_OPS and all(i == name or i in constants for i in node.input)
        if node.op_type not in _PASS_OPS and not affine:
            break
        chain.append(node.op_type)
        name = node.output[0]
    if not any(op in _AFFINE_OPS for op in chain) or len(users) != 1 or users[0].op_type != "Conv":
        return None
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    zero, one = (session.run([name], {contract.INPUT: np.full((1, *shape), v, np.float32)})[0] for v in (0, 1))
    b = zero.mean(axis=(0, 2, 3))
    return InsideNormalisation(tuple(chain), tuple((one.mean(axis=(0, 2, 3)) - b).tolist()), tuple(b.tolist()))


def _infer_output_shapes(model: onnx.ModelProto) -> None:
    """Give the graph outputs without a shape the one inferred from the input's."""
    info = GraphInfo(model)
    for out in model.graph.output:
        if not out.type.tensor_type.HasField("shape") and (shape := info.shape(out.name)) is not None:
            out.type.tensor_type.shape.CopyFrom(
                helper.make_tensor_value_info("", out.type.tensor_type.elem_type, shape).type.tensor_type.shape
            )


def torch_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the first convolution of ``model`` (module order), or ``None`` without one."""
    from torch import nn

    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return next((m.in_channels for m in model.modules() if isinstance(m, convs) and m.in_channels > 0), None)


def probe_torch(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """Run ``model`` once on zeros ``[1, *input_shape]``; a failure raises :class:`InputError` naming the shape."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"the model fails on an input [1, {', '.join(map(str, input_shape))}] (C, H, W): {first}; "
            "set --channels, --input-size or --input-layout"
        ) from None


def channels_first(model: nn.Module, layout: str) -> nn.Module:
    """``model`` taking NCHW input: itself for ``layout == 'NCHW'``; for ``'NHWC'`` a shallow copy (same submodules,
    parameters and names) whose first forward pre-hook permutes NCHW → NHWC, so tracing and verification see an
    NCHW ``input`` (the graph gets a ``Transpose``). ``model`` itself is left as it was."""
    if layout != "NHWC":
        return model
    view = copy.copy(model)
    view._forward_pre_hooks = OrderedDict(model._forward_pre_hooks)
    view.register_forward_pre_hook(lambda _m, args: (args[0].permute(*_TO_NHWC), *args[1:]), prepend=True)
    return view


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

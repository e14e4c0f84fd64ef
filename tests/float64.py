"""Run an explainer graph in float64 with ``onnx.reference`` (pure numpy), to check its mathematics exactly.

In float32, gradients of ReLU/max-pool networks jump where a value lies within rounding of a kink, so onnxruntime
and PyTorch legitimately disagree there. In float64 such ties practically never happen: the graph converted to
float64 must then equal float64 autograd to ~1e-10.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import onnx
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun


def _retype(tp: onnx.TypeProto) -> None:
    if tp.tensor_type.elem_type == TensorProto.FLOAT:
        tp.tensor_type.elem_type = TensorProto.DOUBLE


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` where every float32 tensor, constant, cast and attribute is float64."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        _retype(vi.type)
    for node in g.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.DOUBLE
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float64)))
    return m


class Pad(OpRun):
    """``Pad`` (constant mode) that also accepts negative pads (= cropping), as the spec and onnxruntime do;
    ``onnx.reference``'s own implementation hands negative widths to ``numpy.pad``, which refuses them."""

    op_domain = ""

    def _run(self, data, pads, constant_value=None, axes=None, mode=None):  # type: ignore[override]
        if (mode or "constant") != "constant":
            raise NotImplementedError(mode)
        rank = data.ndim
        axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
        pads = [int(p) for p in pads]
        begin = dict(zip(axes, pads[: len(axes)], strict=True))
        end = dict(zip(axes, pads[len(axes) :], strict=True))
        crop = tuple(slice(max(-begin.get(a, 0), 0), data.shape[a] - max(-end.get(a, 0), 0)) for a in range(rank))
        widths = [(max(begin.get(a, 0), 0), max(end.get(a, 0), 0)) for a in range(rank)]
        value = 0 if constant_value is None else constant_value.item()
        return (np.pad(data[crop], widths, constant_values=value).astype(data.dtype),)


def _pairs(pads: list[int] | None, rank: int) -> list[int]:
    """ONNX ``[b1, b2, …, e1, e2, …]`` → torch ``F.pad`` order (last dim first)."""
    pads = list(pads or [0] * 2 * rank)
    out: list[int] = []
    for d in reversed(range(rank)):
        out += [pads[d], pads[d + rank]]
    return out


class Conv(OpRun):
    """``Conv`` via ``torch.nn.functional.conv{1,2,3}d`` in float64 (the numpy reference is too slow for CNNs)."""

    op_domain = ""

    def _run(self, x, w, b=None, auto_pad=None, dilations=None, group=None, kernel_shape=None, pads=None, strides=None):  # type: ignore[override]
        if auto_pad not in (None, "NOTSET"):
            raise NotImplementedError(auto_pad)
        rank = x.ndim - 2
        conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
        t = F.pad(torch.from_numpy(x), _pairs(pads, rank))
        y = conv(
            t,
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            stride=strides or 1,
            dilation=dilations or 1,
            groups=group or 1,
        )
        return (y.numpy(),)


class ConvTranspose(OpRun):
    """``ConvTranspose`` (no pads / output_shape, as the Conv rule emits it) via torch in float64."""

    op_domain = ""

    def _run(
        self,
        x,
        w,
        b=None,
        auto_pad=None,
        dilations=None,
        group=None,
        kernel_shape=None,
        output_padding=None,  # type: ignore[override]
        output_shape=None,
        pads=None,
        strides=None,
    ):
        if any(pads or []) or output_shape or auto_pad not in (None, "NOTSET"):
            raise NotImplementedError("pads/output_shape")
        rank = x.ndim - 2
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
        y = conv(
            torch.from_numpy(x),
            torch.from_numpy(w),
            None if b is None else torch.from_numpy(b),
            stride=strides or 1,
            dilation=dilations or 1,
            groups=group or 1,
            output_padding=output_padding or 0,
        )
        return (y.numpy(),)


class MaxPool(OpRun):
    """2-D ``MaxPool`` via torch in float64; ``Indices`` flattened over the whole tensor as ONNX defines them."""

    op_domain = ""

    def _run(
        self,
        x,
        auto_pad=None,
        ceil_mode=None,
        dilations=None,
        kernel_shape=None,
        pads=None,  # type: ignore[override]
        storage_order=None,
        strides=None,
    ):
        if auto_pad not in (None, "NOTSET") or x.ndim != 4 or storage_order:
            raise NotImplementedError("MaxPool variant")
        pads = list(pads or [0, 0, 0, 0])
        if pads[:2] != pads[2:]:
            raise NotImplementedError("asymmetric pads")
        y, idx = F.max_pool2d(
            torch.from_numpy(x),
            kernel_shape,
            strides or 1,
            pads[:2],
            dilations or 1,
            ceil_mode=bool(ceil_mode),
            return_indices=True,
        )
        n, c, h, w = x.shape
        plane = (np.arange(n)[:, None] * c + np.arange(c)[None, :]) * (h * w)
        return y.numpy(), idx.numpy() + plane[:, :, None, None]


class AveragePool(OpRun):
    """2-D ``AveragePool`` with symmetric pads via torch in float64."""

    op_domain = ""

    def _run(
        self,
        x,
        auto_pad=None,
        ceil_mode=None,
        count_include_pad=None,
        dilations=None,
        kernel_shape=None,  # type: ignore[override]
        pads=None,
        strides=None,
    ):
        pads = list(pads or [0, 0, 0, 0])
        if (
            auto_pad not in (None, "NOTSET")
            or x.ndim != 4
            or pads[:2] != pads[2:]
            or any(d != 1 for d in dilations or [])
        ):
            raise NotImplementedError("AveragePool variant")
        y = F.avg_pool2d(
            torch.from_numpy(x),
            kernel_shape,
            strides or 1,
            pads[:2],
            ceil_mode=bool(ceil_mode),
            count_include_pad=bool(count_include_pad),
        )
        return (y.numpy(),)


def run_float64(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """All outputs of ``model`` evaluated in float64 by the ONNX reference implementation."""
    m = to_float64(model)
    evaluator = ReferenceEvaluator(m, new_ops=[Pad, Conv, ConvTranspose, MaxPool, AveragePool])
    names = [o.name for o in m.graph.output]
    feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    return dict(zip(names, evaluator.run(names, feeds), strict=True))

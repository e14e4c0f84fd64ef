"""Torch-backed float64 kernels for ``onnx.reference``: its numpy Conv/pooling are too slow for whole CNNs.

Used where torch is present anyway (the PyTorch export path and the tests); each class implements one ONNX op with the
ONNX semantics the explainer graphs use, and raises ``NotImplementedError`` for variants it does not cover.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx.reference.op_run import OpRun

from .autodiff.rules.conv import transposed_begins
from .float64 import float64_evaluator


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
        t = F.pad(torch.tensor(x), _pairs(pads, rank))
        y = conv(
            t,
            torch.tensor(w),
            None if b is None else torch.tensor(b),
            stride=strides or 1,
            dilation=dilations or 1,
            groups=group or 1,
        )
        return (y.numpy(),)


class ConvTranspose(OpRun):
    """``ConvTranspose`` via torch in float64: the full transposed conv, then cropped (or zero-extended) to the ONNX
    output as :func:`~onnxcam_export.autodiff.rules.conv.transposed_begins` places it."""

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
        rank = x.ndim - 2
        kernel = list(kernel_shape or w.shape[2:])
        strides, dilations = list(strides or [1] * rank), list(dilations or [1] * rank)
        extra = list(output_padding or [0] * rank)
        conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[rank - 1]
        full = conv(torch.tensor(x), torch.tensor(w), stride=strides, dilation=dilations, groups=group or 1)
        auto_pad = auto_pad or "NOTSET"
        begins = transposed_begins(kernel, strides, dilations, extra, pads, auto_pad, output_shape, x.shape[2:])
        if output_shape:
            sizes = list(output_shape)[-rank:]
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            sizes = [n * s for n, s in zip(x.shape[2:], strides, strict=True)]
        else:
            ends = [0] * rank if auto_pad == "VALID" else list(pads or [0] * 2 * rank)[rank:]
            sizes = [f + p - bg - e for f, p, bg, e in zip(full.shape[2:], extra, begins, ends, strict=True)]
        widths = [-bg for bg in begins] + [n + bg - f for n, bg, f in zip(sizes, begins, full.shape[2:], strict=True)]
        y = F.pad(full, _pairs(widths, rank))
        if b is not None:
            y = y + torch.tensor(b).reshape(1, -1, *[1] * rank)
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
            torch.tensor(x),
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
            torch.tensor(x),
            kernel_shape,
            strides or 1,
            pads[:2],
            ceil_mode=bool(ceil_mode),
            count_include_pad=bool(count_include_pad),
        )
        return (y.numpy(),)


class GridSample(OpRun):
    """2-D ``GridSample`` via ``torch.nn.functional.grid_sample`` in float64; takes the opset-16 and opset-20 mode
    names (the reference knows only the latter)."""

    op_domain = ""

    def _run(self, x, grid, align_corners=None, mode=None, padding_mode=None):  # type: ignore[override]
        modes = {"linear": "bilinear", "bilinear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
        if x.ndim != 4 or (mode or "bilinear") not in {*modes, "bicubic"}:
            raise NotImplementedError(f"GridSample rank {x.ndim}, mode {mode}")
        y = F.grid_sample(
            torch.tensor(x),
            torch.tensor(grid),
            mode=modes.get(mode or "bilinear", mode),
            padding_mode=padding_mode or "zeros",
            align_corners=bool(align_corners),
        )
        return (y.numpy(),)


class AffineGrid(OpRun):
    """``AffineGrid`` via ``torch.nn.functional.affine_grid`` (the reference's casts its result to float32)."""

    op_domain = ""

    def _run(self, theta, size, align_corners=None):  # type: ignore[override]
        grid = F.affine_grid(torch.tensor(theta), [int(d) for d in size], align_corners=bool(align_corners))
        return (grid.numpy(),)


OPS = [Conv, ConvTranspose, MaxPool, AveragePool, GridSample, AffineGrid]


def evaluate_float64_torch(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:func:`~onnxcam_export.float64.evaluate_float64` with the kernels above."""
    return float64_evaluator(model, OPS)(feeds)

"""Layouts of tapped layers: NCHW, channels-last ``[N, h, w, C]`` and tokens ``[N, prefix + h·w, C]``.

Every layer is classified at export from its shape and the input size (:func:`classify`); the explainer graph then
exposes ``activation:``/``gradient:``/``head:`` in NCHW for every layout, through a Transpose (channels-last) or a
Slice/Transpose/Reshape (tokens) inside the graph (:func:`to_nchw_nodes`, :func:`from_nchw_nodes`): exact by
construction; tokens the model keeps out of row-major order are gathered into it (``Layout.order``,
:mod:`.token_order`). The prefix tokens (class, distillation, register tokens) are dropped from the map, as
pytorch-grad-cam's ``reshape_transform`` does (jacobgil/pytorch-grad-cam, ``usage_examples/vit_example.py``,
``swinT_example.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam.contract import LAYOUTS, Layout

from .errors import ExportError

#: Largest number of prefix tokens inferred without ``--prefix-tokens`` (class + distillation + register tokens).
MAX_PREFIX = 16
NCHW = Layout()


class LayoutError(ExportError):
    """A tapped tensor is not a feature map onnxcam can lay out as ``[N, C, h, w]``."""


def _grids(n_h: int, n_w: int, same_rounding: bool = False) -> set[tuple[int, int]]:
    """Grids ``(h, w)`` a feature extractor with an integer stride ``s`` gives on an ``n_h × n_w`` input: each side
    ``⌊n/s⌋`` or ``⌈n/s⌉``; ``same_rounding``: both sides rounded alike (one padding rule for both axes)."""
    grids = set()
    for s in range(1, max(n_h, n_w) + 1):
        low, high = (n_h // s, n_w // s), (math.ceil(n_h / s), math.ceil(n_w / s))
        pairs = {low, high} if same_rounding else {(h, w) for h in {low[0], high[0]} for w in {low[1], high[1]}}
        grids |= {(h, w) for h, w in pairs if h and w}
    return grids


def is_input_grid(grid: Sequence[int], input_size: tuple[int, int]) -> bool:
    """Whether ``grid`` ``(h, w)`` is what one stride and rounding give on an ``input_size`` input, a valid (unpadded)
    window's shrinkage included (``⌊(n − k)/s⌋ + 1`` with the same ``k``, ``s`` on both sides): a map a default layer
    may be, not an attention's ``[heads, queries]`` that only fits within the input's bounds."""
    return tuple(grid) in _input_grids(*input_size)


@functools.lru_cache(maxsize=8)
def _input_grids(n_h: int, n_w: int) -> frozenset[tuple[int, int]]:
    windows = {
        ((n_h - k) // s + 1, (n_w - k) // s + 1)
        for s in range(1, max(n_h, n_w) + 1)
        for k in range(-8, 16)
        if k <= min(n_h, n_w)
    }
    return frozenset(_grids(n_h, n_w, same_rounding=True) | windows)


def _token_grid(tokens: int, input_size: tuple[int, int], prefix: int | None, grid: tuple[int, int] | None):
    """``(prefix, (h, w))`` with ``tokens = prefix + h·w``: the smallest prefix whose rest is a grid of the input,
    both sides of one stride and rounding (a flat token axis shows no side: ``21`` tokens of a ``32×32`` input are
    ``5 + 4×4`` (stride 8), never ``1 + 4×5``, which would draw a register token as a patch)."""
    grids = [grid] if grid else sorted(_grids(*input_size, same_rounding=True))
    prefixes = [prefix] if prefix is not None else range(min(tokens, MAX_PREFIX + 1))
    for k in prefixes:
        for g in grids:
            if k >= 0 and g[0] * g[1] == tokens - k:
                return k, g
    return None


def classify(
    layer: str,
    shape: Sequence[int],
    input_size: tuple[int, int],
    layout: str | None = None,
    grid: tuple[int, int] | None = None,
    prefix: int | None = None,
    hint: str | None = None,
) -> Layout:
    """The layout of ``layer``'s output ``shape`` (batch first) on an ``input_size`` ``(H, W)`` input.

    4-D: NCHW when dims 2–3 are a grid of the input (some integer stride), channels-last when dims 1–2 are; when both
    or neither are, ``hint`` (from the module: ``nchw``/``channels-last``) decides, else :class:`LayoutError`.
    3-D ``[N, T, C]``: tokens, ``T = prefix + h·w`` with the smallest prefix ≤ ``MAX_PREFIX`` whose rest is a grid.
    ``layout``, ``grid`` and ``prefix`` (``--layer-layout``, ``--layer-grid``, ``--prefix-tokens``) override the
    inference. Anything else raises :class:`LayoutError` naming the shape.
    """
    dims = list(shape)
    shown = f"layer '{layer}' gives {['N', *dims[1:]]}"
    if layout is not None and layout not in LAYOUTS:
        raise LayoutError(f"unknown layout '{layout}'; choose from {', '.join(LAYOUTS)}")
    if len(dims) == 3 and layout in (None, "tokens"):
        if dims[2] == 1 and grid is None and prefix is None:
            raise LayoutError(
                f"{shown}: one value per position, as a pooled vector [N, C, 1] gives, not a token map [N, T, C]; "
                "choose the layer before the pooling (or give --layer-grid H W for 1-channel tokens)"
            )
        found = _token_grid(dims[1], input_size, prefix, grid)
        if found is None:
            raise LayoutError(
                f"{shown}: cannot split {dims[1]} tokens into prefix + a grid of the {input_size[0]}x{input_size[1]} "
                "input; give --layer-grid H W and/or --prefix-tokens K"
            )
        return Layout("tokens", found[1], found[0])
    if len(dims) != 4 or layout == "tokens":
        raise LayoutError(
            f"{shown}: not a feature map; onnxcam explains [N, C, h, w], channels-last [N, h, w, C] or tokens "
            "[N, T, C] (choose another --layer)"
        )
    grids = {grid} if grid else _grids(*input_size)
    fits = [kind for kind, g in (("nchw", tuple(dims[2:])), ("channels-last", tuple(dims[1:3]))) if g in grids]
    if layout is None and not fits and not grid:  # e.g. adaptive pooling on a non-square input: what can be a grid
        fits = [
            kind
            for kind, (h, w) in (("nchw", dims[2:]), ("channels-last", dims[1:3]))
            if h <= input_size[0] and w <= input_size[1]
        ]
    choice = layout or (fits[0] if len(fits) == 1 else hint if hint in fits or (hint and not fits) else None)
    if choice is None:
        raise LayoutError(
            f"{shown}: cannot tell channels-first from channels-last on a {input_size[0]}x{input_size[1]} input; "
            "give --layer-layout nchw or channels-last"
        )
    return Layout() if choice == "nchw" else Layout("channels-last")


def to_nchw_torch(t, layout: Layout):
    """The torch tensor ``t`` (``layout``) as ``[N, C, h, w]`` (a view: slice, reshape, permute)."""
    if layout.kind == "channels-last":
        return t.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        h, w = layout.grid
        patches = t[:, layout.prefix :] if layout.order is None else t[:, [layout.prefix + k for k in layout.order]]
        return patches.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)
    return t


def to_nchw_array(a: np.ndarray, layout: Layout) -> np.ndarray:
    """The array ``a`` (``layout``) as ``[N, C, h, w]`` (prefix tokens dropped), as :func:`to_nchw_nodes` computes."""
    if layout.kind == "channels-last":
        return a.transpose(0, 3, 1, 2)
    if layout.kind == "tokens":
        h, w = layout.grid
        return a[:, _patches(layout, a.shape[1])].transpose(0, 2, 1).reshape(len(a), a.shape[2], h, w)
    return a


def from_nchw_array(a: np.ndarray, raw: np.ndarray, layout: Layout) -> np.ndarray:
    """The tensor ``raw`` (``layout``) with its map replaced by the ``[N, C, h, w]`` array ``a`` (the prefix tokens
    kept as in ``raw``): the inverse of :func:`to_nchw_array` on the positions the map holds."""
    if layout.kind == "channels-last":
        return a.transpose(0, 2, 3, 1)
    if layout.kind == "tokens":
        out = raw.copy()
        out[:, _patches(layout, raw.shape[1])] = a.reshape(len(a), a.shape[1], -1).transpose(0, 2, 1)
        return out
    return a


def _patches(layout: Layout, tokens: int) -> np.ndarray:
    """The indices of a token layout's patch tokens, in the row-major order of its grid."""
    order = np.arange(tokens - layout.prefix) if layout.order is None else np.asarray(layout.order)
    return layout.prefix + order


def _const(graph: onnx.GraphProto, name: str, values: Sequence[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name


def to_nchw_nodes(graph: onnx.GraphProto, layout: Layout, src: str, dst: str, channels: int) -> list[onnx.NodeProto]:
    """Nodes computing ``dst`` = ``src`` (``layout``) as ``[N, C, h, w]``; their constants go to ``graph``.
    ``channels`` is ``C``, written out so that an empty batch reshapes too."""
    if layout.kind == "channels-last":
        return [helper.make_node("Transpose", [src], [dst], name=dst, perm=[0, 3, 1, 2])]
    h, w = layout.grid
    p = f"{dst}/to_nchw/"
    if layout.order is None:
        window = [_const(graph, p + k, v) for k, v in (("starts", [layout.prefix]), ("ends", [2**62]), ("axes", [1]))]
        patches = helper.make_node("Slice", [src, *window], [p + "patches"], name=p + "slice")
    else:  # the tokens at the grid's cells, row-major
        cells = _const(graph, p + "cells", [layout.prefix + k for k in layout.order])
        patches = helper.make_node("Gather", [src, cells], [p + "patches"], name=p + "gather", axis=1)
    return [
        patches,
        helper.make_node("Transpose", [p + "patches"], [p + "nct"], name=p + "transpose", perm=[0, 2, 1]),
        helper.make_node("Reshape", [p + "nct", _const(graph, p + "shape", [0, channels, h, w])], [dst], name=dst),
    ]


def from_nchw_nodes(graph: onnx.GraphProto, layout: Layout, src: str, dst: str, channels: int) -> list[onnx.NodeProto]:
    """Nodes computing ``dst`` in ``layout`` from the ``[M, C, h, w]`` map ``src`` (no prefix tokens to restore)."""
    if layout.kind == "channels-last":
        return [helper.make_node("Transpose", [src], [dst], name=dst, perm=[0, 2, 3, 1])]
    p = f"{dst}/from_nchw/"
    shape = _const(graph, p + "shape", [0, channels, layout.grid[0] * layout.grid[1]])
    nodes = [
        helper.make_node("Reshape", [src, shape], [p + "nct"], name=p + "reshape"),
        helper.make_node(
            "Transpose",
            [p + "nct"],
            [p + "cells" if layout.order else dst],
            name=p + "cells" if layout.order else dst,
            perm=[0, 2, 1],
        ),
    ]
    if layout.order:  # the cell of each token
        tokens = _const(graph, p + "tokens", np.argsort(layout.order).tolist())
        nodes.append(helper.make_node("Gather", [p + "cells", tokens], [dst], name=dst, axis=1))
    return nodes


def nchw_shape(layout: Layout, shape: Sequence[int | str | None]) -> list[int | str | None]:
    """The ``[N, C, h, w]`` shape of a tensor of ``shape`` in ``layout``."""
    if layout.kind == "channels-last":
        return [shape[0], shape[3], shape[1], shape[2]]
    if layout.kind == "tokens":
        return [shape[0], shape[2], *layout.grid]
    return list(shape)


def onnx_layout(layer: str, shape: Sequence[int | str | None], input_size: tuple[int, int]) -> Layout:
    """The layout of an ONNX file's tensor ``layer`` of ``shape``: tokens ``[N, T, C]`` (:func:`classify`, the token
    layout of ViT layers), NCHW otherwise; channels-last and other tensors raise :func:`refuse_non_nchw`'s one-line
    :class:`LayoutError`."""
    if shape and len(shape) == 3 and all(isinstance(d, int) for d in shape[1:]):
        return classify(layer, [1, *shape[1:]], input_size, layout="tokens")  # type: ignore[list-item]
    refuse_non_nchw(layer, shape, input_size)
    return NCHW


def refuse_non_nchw(layer: str, shape: Sequence[int | str | None], input_size: tuple[int, int]) -> None:
    """For a tensor of an ONNX file (no module to read a hint from): raise :class:`LayoutError` in one line when its
    shape says channels-last or tokens with unknown sizes, which only a PyTorch source can be explained at yet
    (:func:`onnx_layout` takes token tensors first); shapes that could be either stay NCHW, as before."""
    if not shape:  # unknown: nothing to tell
        return None
    dims = [d if isinstance(d, int) else 1 for d in shape]
    try:
        layout = classify(layer, dims, input_size, hint="nchw")
    except LayoutError:
        return None if len(dims) == 4 else _refuse(layer, shape, "is not a feature map [N, C, h, w]")
    if layout.kind != "nchw":
        _refuse(layer, shape, f"looks {layout.describe()}")
    return None


def _refuse(layer: str, shape: Sequence[int | str | None], why: str) -> None:
    raise LayoutError(
        f"tensor '{layer}' {['N', *shape[1:]]} {why}: ONNX sources are explained at NCHW and token [N, T, C] "
        "tensors, and at channels-last ones only where a LayerNorm or MatMul over C shows it; pick the tensor after "
        "its Transpose/Reshape to [N, C, h, w], or export from the PyTorch model"
    )

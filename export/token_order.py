"""Layers whose positions are not in row-major grid order (Hiera's unrolled tokens): laid out exactly, or refused.

A layer's map is laid out row-major from its layout (:mod:`.layouts`): token ``t`` at ``(t // w, t % w)``. Some
models reorder their positions between the patch embedding and the layer and restore the order only later: timm's
Hiera ``unroll``s the patch grid so that mask units are contiguous, and its tokens are back in spatial order only at
the last stage (``Hiera.reroll`` restores them for intermediates outside the graph). A row-major map of such a layer
puts tokens at wrong places while its gradients stay exact, so verification cannot see it. Here the positions of the
layer's elements are traced from the input (:mod:`.positions`). Where those known go backwards along a row or a
column of the map, a token layer whose tokens are all known and form the grid gets their order
(:attr:`onnxcam.contract.Layout.order`: the graph gathers them into row-major order); any other layer is refused in
one line naming the node that reordered them. Before that check, a token layer's split into prefix and grid is
taken from the same positions (:func:`traced_split`): the prefix tokens (class, register) stand nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from onnxcam import contract
from onnxcam.contract import Layout

from .layouts import LayoutError, classify, to_nchw_array
from .onnx_token_layer import random_input
from .positions import SAME, ancestors, trace

#: Ops that can reorder positions; an NCHW layer no such node feeds is in order by construction (convolutions).
REORDERING = frozenset({"Reshape", "Transpose", "Flatten", "Gather", "GatherND", "Squeeze", "Unsqueeze", "Split"})


def in_grid_order(
    model: onnx.ModelProto,
    layouts: dict[str, Layout],
    size: tuple[int, int],
    log: Callable[[str], None],
    split_given: bool = False,
) -> dict[str, Layout]:
    """``layouts`` (of layers tapped as ``activation:<layer>`` in the forward ``model``, on an ``size`` ``(H, W)``
    input), each token layer split by its traced positions (:func:`traced_split`) and, where its tokens are a
    reordered grid, given its :attr:`Layout.order`; raises a one-line :class:`LayoutError` for a layer whose map
    would be out of row-major grid order otherwise. ``split_given``: the token split came from ``--prefix-tokens`` /
    ``--layer-grid``, so a split its positions contradict is refused rather than corrected."""
    taps = {layer: contract.activation_name(layer) for layer in layouts}
    checked = [
        layer
        for layer, layout in layouts.items()
        if layout.kind != "nchw" or any(n.op_type in REORDERING for n in ancestors(model, [taps[layer]]))
    ]
    if not checked:
        return layouts
    image = random_input(model, size)
    try:
        places, nodes = trace(model, [taps[layer] for layer in checked], image)
    except Exception:  # onnxruntime cannot run the graph: the verification that follows names the cause
        return layouts
    found = dict(layouts)
    for layer in checked:
        place = places.get(taps[layer])
        if place is None:
            continue
        found[layer] = traced_split(layer, place, layouts[layer], size, log, split_given)
        if in_order(to_nchw_array(place, found[layer])):
            continue
        why = _culprit(places, nodes, image)
        order = grid_order(place, found[layer])
        if order is None:
            raise LayoutError(
                f"layer '{layer}': its positions are not in row-major grid order ({why}, and not restored before "
                "this layer), so a map of it would put them at wrong places; explain a layer after the order is "
                "restored, e.g. the default layer (no --layer) or the last stage's output"
            )
        found[layer] = replace(found[layer], order=order)
        log(f"layer '{layer}': its tokens are not in row-major grid order ({why}): laid out by their traced positions")
    return found


def traced_split(
    layer: str, place: np.ndarray, layout: Layout, size: tuple[int, int], log: Callable[[str], None], given: bool
) -> Layout:
    """The token ``layout`` of ``layer`` re-split by its positions ``place`` ``[N, T, C]`` (:func:`traced_prefix`):
    a token count fits several splits (``29 = 1 + 7×4 = 5 + 6×4`` on a 96×64 input), the positions tell the prefix
    tokens (class, register: no position) from the patches. Kept as it is where the positions cannot decide or the
    traced prefix splits into no grid; a ``given`` split they contradict raises a one-line :class:`LayoutError`."""
    prefix = traced_prefix(place) if layout.kind == "tokens" else None
    if prefix is None or prefix == layout.prefix:
        return layout
    if given:
        raise LayoutError(
            f"layer '{layer}': the given --prefix-tokens/--layer-grid split it as {layout.describe()}, but its traced "
            f"positions show {prefix} leading token(s) standing nowhere in the image (class/register tokens) and "
            f"patches after them; give --prefix-tokens {prefix} (and no --layer-grid, or the matching one)"
        )
    try:
        found = classify(layer, place.shape, size, layout="tokens", prefix=prefix)
    except LayoutError:
        return layout
    log(
        f"layer '{layer}': {found.describe()}, not {layout.describe()}: its first {prefix} token(s) have no image "
        "position (class/register tokens), the rest do"
    )
    return found


def traced_prefix(place: np.ndarray) -> int | None:
    """The number of leading tokens of the positions ``place`` ``[N, T, C]`` that are unknown at every element when
    every later token has one known position (all its channels alike); ``None`` when the positions cannot tell
    (all unknown, an unknown token after a known one, a token partly known)."""
    unknown = np.isnan(place).all(axis=(0, 2))
    cells = place.mean(axis=2, keepdims=True)
    known = np.all(np.abs(place - cells) <= SAME, axis=(0, 2))  # False where any part is NaN
    prefix = int(np.argmin(unknown)) if not unknown.all() else len(unknown)
    if prefix == len(unknown) or not unknown[:prefix].all() or not known[prefix:].all():
        return None
    return prefix


def grid_order(place: np.ndarray, layout: Layout) -> tuple[int, ...] | None:
    """For the positions ``place`` ``[N, T, C]`` of a token ``layout``: the token (after the prefix) at each cell of
    its grid, row-major, when every patch token's position is known and they form the grid (rows of equal ``y``,
    columns of equal ``x``, both increasing); ``None`` otherwise."""
    if layout.kind != "tokens":
        return None
    h, w = layout.grid
    tokens = place[0, layout.prefix :]
    cells = tokens.mean(axis=1)
    if np.isnan(cells).any() or np.abs(tokens - cells[:, None]).max() > SAME:
        return None
    order = np.lexsort((cells.imag, cells.real))
    grid = cells[order].reshape(h, w)
    rows, columns = grid.real, grid.imag
    exact = np.abs(rows - rows[:, :1]).max() <= SAME and np.abs(columns - columns[:1]).max() <= SAME
    increasing = bool(np.all(np.diff(rows[:, 0]) > SAME) and np.all(np.diff(columns[0]) > SAME))
    return tuple(int(k) for k in order) if exact and increasing else None


def in_order(place: np.ndarray) -> bool:
    """Whether the known positions of the ``[N, C, h, w]`` map ``place`` never go up along a column nor left along a
    row (a channel whose positions differ from the others' does not count)."""
    cells = place.mean(axis=1)
    known = np.all(np.abs(place - cells[:, None]) <= SAME, axis=1)  # False where unknown (NaN in either part)
    down = np.diff(np.where(known, cells.real, np.nan), axis=1)
    right = np.diff(np.where(known, cells.imag, np.nan), axis=2)
    return not (np.any(down < -SAME) or np.any(right < -SAME))


def _culprit(places: dict[str, np.ndarray], nodes: list[onnx.NodeProto], image: np.ndarray) -> str:
    """``reordered by node 'X'``: the node writing the first token tensor ``[N, T, C]`` out of order, if any."""
    size = image.shape[2:]
    for node in nodes:
        for name in node.output:
            place = places.get(name)
            if place is None or place.ndim != 3 or place.shape[0] != image.shape[0]:
                continue
            try:
                layout = classify(name, place.shape, size)
            except LayoutError:
                continue
            if not in_order(to_nchw_array(place, layout)):
                return f"reordered by node '{node.name or name}' ({node.op_type})"
    return "reordered between the patch embedding and this layer"

"""Which layer to explain in a PyTorch model: the default a practitioner would pick, and the layouts of the layers
asked for (from one probe forward, :func:`export.torch_capture.module_calls`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from onnxcam.contract import Layout

from .layers import LayerError
from .layouts import LayoutError, classify, is_input_grid, to_nchw_torch
from .torch_capture import Call, check_layers


def _kind(module: nn.Module) -> str:
    return type(module).__name__


def _is_layer_norm(module: nn.Module) -> bool:
    """LayerNorm/RMSNorm over the last axis (token and channels-last models); not BatchNorm, not LayerNorm2d."""
    name = _kind(module)
    return (isinstance(module, nn.LayerNorm | nn.RMSNorm) and not name.endswith("2d")) or name.endswith("RMSNorm")


def _is_layout_only(module: nn.Module) -> bool:
    return isinstance(module, nn.Identity | nn.Flatten | nn.Unflatten) or _kind(module) == "Permute"


def _hint(modules: Sequence[nn.Module], any_layer_norm: bool) -> str | None:
    """Layout the 4-D output of ``modules`` (all returning one tensor) has when its shape alone cannot tell (e.g.
    ``[N, 8, 8, 8]``)."""
    if any(_is_layer_norm(m) for m in modules):
        return "channels-last"
    spatial = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)
    if any(isinstance(m, spatial) for m in modules) or not any_layer_norm:
        return "nchw"
    return None


def display_name(call: Call, calls: Sequence[Call] = ()) -> str:
    """The outermost of the names returning ``call``'s tensor (``layer4`` rather than ``layer4.1.relu``), but not a
    container of stages of different shapes (Swin's ``layers``: ``layers.3`` is what people name)."""
    shapes: dict[str, set[tuple[int, ...]]] = {}
    for c in calls:
        for label in [c.name, *c.aliases]:
            shapes.setdefault(label.rpartition(".")[0], set()).add(tuple(c.output.shape))
    names = [n for n in [call.name, *call.aliases] if len(shapes.get(n, ())) <= 1] or [call.name]
    return min(names, key=lambda n: (n.count("."), len(n)))


def resolve_layouts(
    model: nn.Module,
    calls: Sequence[Call],
    layers: Sequence[str],
    input_size: tuple[int, int],
    layout: str | None = None,
    grid: tuple[int, int] | None = None,
    prefix: int | None = None,
) -> dict[str, Layout]:
    """The layout of each asked-for layer, from one probe forward's ``calls``; raises a one-line :class:`LayerError`
    for a module that runs several times but is named without ``#k``, never runs, or returns no tensor, and a
    :class:`LayoutError` for an output that is not a feature map."""
    check_layers(model, layers)
    named = {label: call for call in calls for label in [call.name, *call.aliases]}
    any_ln = any(_is_layer_norm(m) for m in model.modules())
    found = {}
    for layer in layers:
        call = named.get(layer)
        if call is None:
            several = [label for label in named if label.rpartition("#")[0] == layer]
            if several:
                shapes = ", ".join(f"{n} → {['N', *named[n].output.shape[1:]]}" for n in several)
                raise LayerError(
                    layer,
                    [],
                    f"layer '{layer}' is a module that runs {len(several)} times in one forward ({shapes}); "
                    f"name one call, e.g. --layer {several[-1]}",
                )
            raise LayerError(layer, [], f"layer '{layer}' does not return a tensor in the forward pass (or never runs)")
        hint = _hint(call.modules, any_ln)
        found[layer] = classify(layer, tuple(call.output.shape), input_size, layout, grid, prefix, hint)
    return found


def choose_default(
    model: nn.Module, calls: Sequence[Call], input_size: tuple[int, int], dense_classes: int | None = None
) -> tuple[str, Layout, str]:
    """The layer a practitioner would pick, its layout and why (one phrase).

    Candidates: maps with more than one position, on a grid of the input (one stride and rounding: not an
    attention's ``[heads, queries]``, which only fits the input's bounds), that the top-1 logit's gradient reaches.
    A ViT-like model (the last candidate is tokens after a class token) gets the last LayerNorm output among them —
    ``blocks[-1].norm1``,
    pytorch-grad-cam's choice (jacobgil/pytorch-grad-cam ``usage_examples/vit_example.py``): the block outputs after
    it carry no gradient to the patch tokens when the head reads the class token. Otherwise the last spatial map
    before pooling, skipping a trailing LayerNorm or permute that reads it (Swin: the last stage's output; HF Swin,
    whose final LayerNorm reads a residual sum no module returns: that LayerNorm's output); a CNN's activation
    module comes after its BatchNorm, so the activated map is the one picked. ``dense_classes``: ``K`` of a dense
    output ``[N, K, H, W]``, whose maps with ``K`` channels (the class maps, before any upsampling) are skipped, as
    :func:`.onnx_prep.default_tensor` does: Grad-CAM there only reproduces the logits.
    """
    any_ln = any(_is_layer_norm(m) for m in model.modules())
    batch = calls[0].output.shape[0] if calls else 0
    with_grads = any(c.grad is not None for c in calls)
    maps: list[tuple[Call, Layout]] = []
    for call in calls:
        if call.output.dim() < 3 or call.output.shape[0] != batch:
            continue
        try:
            layout = classify(call.name, tuple(call.output.shape), input_size, hint=_hint(call.modules, any_ln))
        except LayoutError:
            continue
        grid = to_nchw_torch(call.output, layout).shape[2:]
        reached = call.grad is not None and bool(to_nchw_torch(call.grad, layout).abs().max() > 0)
        class_maps = dense_classes is not None and to_nchw_torch(call.output, layout).shape[1] == dense_classes
        if grid[0] * grid[1] > 1 and is_input_grid(grid, input_size) and (reached or not with_grads) and not class_maps:
            maps.append((call, layout))
    if (
        not maps
        and with_grads
        and not any(c.grad is not None and c.grad.abs().max() > 0 for c in calls if c.output.dim() > 2)
    ):
        raise LayerError(
            "<default>",
            [],
            "the scores' gradient is 0 at every layer (a zero-initialised head, as torchvision's untrained ViT?): "
            "no layer can be chosen by it; load trained weights or name a layer with --layer",
        )
    if not maps:
        raise LayerError("<default>", [], "no module produces a feature map; name a layer with --layer")
    if maps[-1][1].prefix:  # a class token is what the head reads
        norms = [(c, la) for c, la in maps if la.prefix and _is_layer_norm(c.module)]
        if norms:
            call, layout = norms[-1]
            why = "the last LayerNorm whose patch tokens reach the scores: ViT's blocks[-1].norm1"
            return display_name(call, calls), layout, why
    i = len(maps) - 1
    while i > 0 and all(_is_layer_norm(m) or _is_layout_only(m) for m in maps[i][0].modules):
        if maps[i - 1][0].name not in maps[i][0].reads:  # it reads no module's map (e.g. a residual sum): keep it
            break
        i -= 1
    call, layout = maps[i]
    skipped = ", ".join(display_name(c, calls) for c, _ in maps[i + 1 :])
    after = f"; after it only {skipped}" if skipped else ""
    before = "the class maps" if dense_classes is not None else "pooling"
    return display_name(call, calls), layout, f"the last spatial map before {before}{after}"


def unreached_layers(calls: Sequence[Call], layouts: dict[str, Layout]) -> list[str]:
    """The layers of ``layouts`` whose map (as ``[N, C, h, w]``: a token layer's prefix tokens dropped) the probe's
    top-1 gradient reaches at no position, e.g. a ViT's final LayerNorm, whose patch tokens the head never reads:
    every gradient CAM there is blank. Empty when the probe computed no gradient."""
    if not any(c.grad is not None for c in calls):
        return []
    named = {label: call for call in calls for label in [call.name, *call.aliases]}
    return [
        layer
        for layer, layout in layouts.items()
        if layer in named and (named[layer].grad is None or not to_nchw_torch(named[layer].grad, layout).any())
    ]

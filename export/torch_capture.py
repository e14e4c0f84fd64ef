"""PyTorch side of the export: tap named modules and trace the forward to ONNX with the taps as extra outputs."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence

import onnx
import torch
from torch import nn

from onnxcam import contract

from .layers import LayerError, nearest_names
from .torch_outputs import pick

EXPORTERS = ("torchscript", "dynamo")


def check_layers(model: nn.Module, layers: Sequence[str]) -> dict[str, nn.Module]:
    """The model's modules by name; a :class:`LayerError` with the nearest names for a layer that is not one."""
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules:
            raise LayerError(name, nearest_names(name, [n for n in modules if n]))
    return modules


@contextlib.contextmanager
def tapped(model: nn.Module, layers: Sequence[str]) -> Iterator[list[torch.Tensor]]:
    """Record the outputs of ``layers`` (module names) during forward passes, in ``layers`` order.

    Each hook hands the network a clone of the output, so in-place ops downstream (``x += identity``,
    ``ReLU(inplace=True)``) never change the recorded feature map.
    """
    modules = check_layers(model, layers)
    captured: list[torch.Tensor] = []
    slots: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise LayerError(name, [], f"layer '{name}' returns {type(output).__name__}, not a tensor")
            slots[name] = output
            return output.clone()

        return hook

    handles = [modules[name].register_forward_hook(make_hook(name)) for name in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()
    captured.extend(slots[name] for name in layers if name in slots)


class _TappedForward(nn.Module):
    """``x ↦ (scores, A_1, …, A_L)``: the model's scores (its output, or the output called ``scores_from`` among
    several, :mod:`.torch_outputs`) followed by the tapped feature maps."""

    def __init__(self, model: nn.Module, layers: Sequence[str], scores_from: str | None = None) -> None:
        super().__init__()
        check_layers(model, layers)
        self.model = model
        self.layers = list(layers)
        self.scores_from = scores_from

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with tapped(self.model, self.layers) as activations:
            scores = pick(self.model(x), self.scores_from)
        return (scores, *activations)


def forward_with_taps(
    model: nn.Module, layers: Sequence[str], x: torch.Tensor, scores_from: str | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eager forward returning the scores and the feature maps of ``layers`` (part of the autograd graph)."""
    scores, *activations = _TappedForward(model, layers, scores_from)(x)
    return scores, activations


def to_onnx(
    model: nn.Module,
    layers: Sequence[str],
    input_size: tuple[int, int],
    channels: int = 3,
    opset: int = 18,
    exporter: str = "dynamo",
    optimize: bool = True,
    scores_from: str | None = None,
) -> onnx.ModelProto:
    """Trace ``model`` (eval mode) to an ONNX forward graph with outputs ``scores`` and ``activation:<layer>``.

    The batch dimension is dynamic; the example batch has 2 images so no exporter specialises it to 1.
    ``optimize=False`` keeps the graph as traced (no constant folding, BatchNorm not folded into Conv).
    ``scores_from``: the name of the scores among the model's outputs (:func:`.torch_outputs.scores_name`).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter '{exporter}', choose one of {', '.join(EXPORTERS)}")
    wrapper = _TappedForward(model.eval(), layers, scores_from).eval()
    example = torch.randn(2, channels, *input_size)
    output_names = [contract.SCORES, *(contract.activation_name(layer) for layer in layers)]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            program = torch.onnx.export(
                wrapper,
                (example,),
                input_names=[contract.INPUT],
                output_names=output_names,
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("N")},),
                optimize=optimize,
                verbose=False,
            )
            return program.model_proto
        torch.onnx.export(
            wrapper,
            (example,),
            buffer,
            input_names=[contract.INPUT],
            output_names=output_names,
            opset_version=opset,
            dynamo=False,
            dynamic_axes={name: {0: "N"} for name in [contract.INPUT, *output_names]},
            do_constant_folding=optimize,
        )
    return onnx.load_from_string(buffer.getvalue())


def default_layer(model: nn.Module, input_shape: tuple[int, int, int]) -> str:
    """The last module output that is a 4-D map with more than one position (what global pooling consumes).

    Several nested modules often return that same tensor (``layer4``, ``layer4.1``, ``layer4.1.relu``); the
    outermost one is picked, as people name it.
    """
    produced: list[tuple[str, torch.Tensor]] = []

    def record(name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                produced.append((name, output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    if not produced:
        raise LayerError("<default>", [], "no module produces a 4-D feature map; name a layer with --layer")
    last = produced[-1][1]
    return min((name for name, t in produced if t is last), key=lambda n: (n.count("."), len(n)))

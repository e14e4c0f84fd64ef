"""Model parameter randomisation test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018), cascading
from the top layer — docs/METHODS.md, "Sanity check".

The parametrised layers of the explainer graph (top-level ``Conv``, ``ConvTranspose``, ``Gemm`` and ``MatMul`` nodes
with float initializers, in graph order) are randomised cumulatively from the output down: step ``k`` replaces the
weights and biases of the ``k`` top layers by ``N(0, σ_w²)`` draws (``σ_w`` the standard deviation of the replaced
tensor, so the scale is kept; ``numpy.random.default_rng(mprt_seed)``), without rewriting the file: onnxruntime
loads the same graph with those initializers overridden (``SessionOptions.add_initializer``), so the forward pass and
the exact gradients built from the same weights change together. The method explains each image again with the same
target, layers and options, and the map is compared with the original one:

- ``spearman``: Spearman's rank correlation of the two maps' pixels (scipy's ``spearmanr``; 1 for equal maps, else 0
  when either map is constant: no ranks to agree on);
- ``ssim``: the structural similarity of the two ``[0, 1]`` maps (scikit-image's ``structural_similarity``,
  ``data_range = 1``).

A method that passes the check gives maps that decorrelate as layers are randomised. :func:`mprt_curve` gives the
whole cascade; the metrics ``mprt`` (Spearman) and ``mprt_ssim`` score the map of the model with its
``mprt_layers`` top layers randomised (default 0: all of them; more than the graph has is refused, never clamped).
Lower means the explanation depends on the weights, as it should. Cost: one explanation per image and cascade step.
Reading the graph's layers needs ``onnx``, scipy and scikit-image: ``pip install 'onnxcam[metrics]'``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import progress
from .base import Metric, MetricOption, MetricRequest, declare_option, register

PARAMETRISED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
LAYERS = declare_option(MetricOption("mprt_layers", 0, "mprt: top layers randomised (0: all)", low=0))
RANDOM_SEED = declare_option(MetricOption("mprt_seed", 0, "mprt: seed of the random weights", low=0))


def _optional(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0].replace("skimage", "scikit-image")
        raise ImportError(f"the MPRT sanity check needs {package}: pip install 'onnxcam[metrics]'") from None


@dataclass(frozen=True)
class Layer:
    """A parametrised node: its ``name`` (the node's, or its first weight's) and its weights ``{name: array}``."""

    name: str
    weights: dict[str, np.ndarray]


def parametrised_layers(path: str | Path) -> list[Layer]:
    """The graph's parametrised layers in graph (input-to-output) order; their float initializers loaded."""
    onnx = _optional("onnx")
    numpy_helper = _optional("onnx.numpy_helper")
    graph = onnx.load(str(path), load_external_data=False).graph  # external data (a large graph): read per tensor
    tensors = {t.name: t for t in graph.initializer}
    overridable = {i.name for i in graph.input}  # seed, head inputs, switches: inputs with defaults, not weights
    layers, seen = [], set()
    for node in graph.node:
        if node.op_type not in PARAMETRISED:
            continue
        names = [n for n in node.input if n in tensors and n not in overridable and n not in seen]
        weights = {n: numpy_helper.to_array(tensors[n], str(Path(path).parent)) for n in names}
        weights = {n: w for n, w in weights.items() if w.dtype.kind == "f" and w.size > 1}
        if weights:
            seen.update(weights)
            layers.append(Layer(node.name or next(iter(weights)), weights))
    return layers


def randomisable(path: str | Path, count: int = 0) -> list[Layer]:
    """The ``count`` top parametrised layers of the graph at ``path`` (0: all), top first. ValueError in one line when
    the graph has none, or fewer than ``count`` (``mprt_layers`` is never clamped silently)."""
    found = parametrised_layers(path)[::-1]
    name = Path(path).name
    if not found:
        raise ValueError(
            f"mprt: {name} has no float Conv/ConvTranspose/Gemm/MatMul weights to randomise (a quantized graph keeps "
            "integer weights); run the check on the float model"
        )
    if count > len(found):
        raise ValueError(
            f"mprt: cannot randomise {count} top layers (mprt_layers): {name} has {len(found)} randomisable layers "
            f"(float Conv/ConvTranspose/Gemm/MatMul weights); give 1 to {len(found)}, or 0 for all"
        )
    return found[: count or len(found)]


def check_layers(explainer: Any, options: Mapping[str, Any]) -> None:
    """Before any image: :func:`randomisable` for ``options``' ``mprt_layers`` on ``explainer``'s graph."""
    randomisable(explainer.path, int(options.get(LAYERS.name, LAYERS.default)))


def randomised(layers: Sequence[Layer], seed: int) -> list[dict[str, np.ndarray]]:
    """Per layer, its weights redrawn from ``N(0, std(w)²)`` in their dtype (one generator for the whole cascade)."""
    rng = np.random.default_rng(seed)
    return [
        {n: rng.normal(0.0, float(w.std()), w.shape).astype(w.dtype) for n, w in layer.weights.items()}
        for layer in layers
    ]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's ρ of the flattened maps; 1 for equal maps, else 0 when either is constant."""
    a, b = np.ravel(a), np.ravel(b)
    if np.array_equal(a, b):
        return 1.0
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(_optional("scipy.stats").spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two maps in ``[0, 1]`` (``data_range = 1``)."""
    metrics = _optional("skimage.metrics")
    return float(metrics.structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64), data_range=1.0))


@dataclass(frozen=True)
class CascadeStep:
    """After randomising the layers down to ``layer`` (``""``: none): per image ``spearman`` and ``ssim`` ``[N]``."""

    layer: str
    spearman: np.ndarray
    ssim: np.ndarray


def mprt_curve(
    explainer: Any,
    x: np.ndarray,
    seed: np.ndarray,
    method: str,
    layers: Sequence[str] | None = None,
    options: Mapping[str, Any] | None = None,
    steps: int = 0,
    random_seed: int = 0,
    last_only: bool = False,
) -> list[CascadeStep]:
    """The cascade: step 0 (nothing randomised: ρ = SSIM = 1 for a deterministic method), then one step per layer
    randomised from the top, ``steps`` of them (0: all; more than the graph has: ValueError, before any work).
    Explains the batch ``steps + 2`` times; with ``last_only``, twice, returning only the last step (the same weights:
    one generator draws the whole cascade).

    ``explainer``: an :class:`onnxcam.Explainer`; ``x`` ``[N, C, H, W]`` preprocessed; ``seed`` ``[N, *S]`` the
    explained quantity's weights (one-hot of the class for class targets); ``method``, ``layers`` and ``options`` as
    for :meth:`~onnxcam.Explainer.explain_arrays`.
    """
    from ..explainer import Explainer
    from ..methods import get_method
    from ..methods.options import method_options

    found = randomisable(explainer.path, steps)
    name = get_method(method).name
    own = {o.name for o in method_options(name)}
    kwargs = {
        "methods": [name],
        "layers": layers,
        "seed": seed,
        "options": {k: v for k, v in (options or {}).items() if k in own},
    }
    original = np.stack([r.maps[name] for r in explainer.explain_arrays(x, **kwargs)])
    # step 0 loads the file's own weights through the same override path: ρ = SSIM = 1 checks the machinery
    replaced = {n: w for layer in found for n, w in layer.weights.items()}
    cascade = list(zip([None, *found], [{}, *randomised(found, random_seed)], strict=True))
    if last_only:
        cascade = [(found[-1], {n: w for _, weights in cascade for n, w in weights.items()})]
    curve = []
    bar = progress.bar(len(cascade), f"mprt {name}", unit="step", leave=False)
    for layer, weights in cascade:
        replaced.update(weights)
        model = Explainer(
            explainer.path, explainer.provider_choice, explainer.threads, explainer.preprocess, initializers=replaced
        )
        maps = np.stack([r.maps[name] for r in model.explain_arrays(x, **kwargs)])
        curve.append(
            CascadeStep(
                layer.name if layer else "",
                np.array([spearman(a, b) for a, b in zip(original, maps, strict=True)]),
                np.array([ssim(a, b) for a, b in zip(original, maps, strict=True)]),
            )
        )
        bar.update(1)
    bar.close()
    return curve


def mprt_family(request: MetricRequest, names: frozenset[str]) -> dict[str, np.ndarray]:
    """``mprt`` (Spearman) and ``mprt_ssim`` of the maps after randomising ``mprt_layers`` top layers (0: all)."""
    if not request.method or not hasattr(request.model, "path"):
        raise ValueError("mprt explains again: it needs an onnxcam Explainer and the method that made the maps")
    last = mprt_curve(
        request.model,
        request.x,
        request.seed,
        request.method,
        request.layers or None,
        request.options,
        request.option(LAYERS),
        request.option(RANDOM_SEED),
        last_only=True,
    )[-1]
    return {name: {"mprt": last.spearman, "mprt_ssim": last.ssim}[name] for name in names}


register(Metric("mprt", mprt_family, False, in_all=False, units=False, check=check_layers))
register(Metric("mprt_ssim", mprt_family, False, in_all=False, units=False, check=check_layers))

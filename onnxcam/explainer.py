"""The Python API: an :class:`Explainer` over one explainer graph turns images into CAM maps (no torch)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import contract
from .images import read_image
from .methods import CamMethod, get_method
from .methods.request import MethodRequest, ModelMethod, objective
from .model_file import ExplainerGraph, open_graph
from .postprocess import fuse, layer_map, normalize
from .preprocess import preprocess, preprocess_batch
from .providers import check_used, provider_list, session_options
from .targets import Target, resolve_target

ImageLike = str | Path | np.ndarray


@dataclass(frozen=True)
class GraphOutputs:
    """One run of the explainer graph on a batch."""

    scores: np.ndarray
    target_used: np.ndarray
    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]


@dataclass(frozen=True)
class MethodMaps:
    """One method's output for a batch: final maps ``[N, H, W]``, and raw layer maps or input attributions."""

    final: np.ndarray
    raw: dict[str, np.ndarray] | None
    attributions: np.ndarray | None
    details: dict[str, np.ndarray]


@dataclass
class Explanation:
    """The explanation of one image.

    ``maps[method]``: final map at network input resolution, values in [0, 1] (layers fused).
    ``raw[method][layer]``: the un-normalised map at layer resolution (compare magnitudes across images).
    ``attributions[method]``: input-resolution attributions ``[C, H, W]`` of the input-gradient methods.
    ``details[method]``: per-image numbers a method reports (e.g. Integrated Gradients' ``completeness_gap``).
    ``metrics[method][metric]``: faithfulness scores of the map (:mod:`onnxcam.metrics`), when asked for.
    ``topk``: ``(class index, label, probability)`` from the softmax of the logits (of their spatial mean for a
    dense output). ``class_index`` is ``-1`` and ``score`` is ``Σ seed ⊙ scores`` when a seed was explained.
    """

    class_index: int
    label: str | None
    score: float
    probability: float
    topk: list[tuple[int, str | None, float]]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # original (H, W) when known


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities."""
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_scores(scores: np.ndarray) -> np.ndarray:
    """Per-class scores ``[N, K]``: the logits, or their spatial mean for a dense output ``[N, K, H, W]``."""
    return scores if scores.ndim == 2 else scores.reshape(*scores.shape[:2], -1).mean(axis=2)


def one_hot_seed(classes: np.ndarray, score_shape: Sequence[int]) -> np.ndarray:
    """The seed of class targets: ``seed[n, k, …] = [k = classes[n]]`` broadcast over a dense output's positions."""
    seed = np.zeros((len(classes), *score_shape), np.float32)
    seed[np.arange(len(classes)), np.asarray(classes)] = 1.0
    return seed


def head_weights(gradients: np.ndarray) -> np.ndarray:
    """CAM weights ``w^c`` of a GAP→Linear head, read off the gradient: there ``G = w^c / Z`` at every position."""
    mean = gradients.mean(axis=(2, 3))
    spread = np.abs(gradients - mean[..., None, None]).max()
    if spread > 1e-5 * max(float(np.abs(gradients).max()), 1e-12):
        raise ValueError("CAM needs a global-average-pooling → linear head after the layer (the gradient varies)")
    return mean * (gradients.shape[2] * gradients.shape[3])


class Explainer:
    """Explain images with an onnxcam explainer graph on onnxruntime.

    ``provider``: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``; ``self.provider`` says which runs.
    ``preprocess`` overrides the graph's own preprocessing metadata.
    """

    def __init__(
        self,
        model: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        preprocess: contract.Preprocess | None = None,
    ) -> None:
        providers = provider_list(provider)
        self.graph: ExplainerGraph = open_graph(model, providers, session_options(threads))
        check_used(provider, self.graph.providers)
        self.metadata = self.graph.metadata
        self.preprocess = preprocess or self.metadata.preprocess
        self.layers = self.metadata.layers
        self.labels = self.metadata.labels
        self.score_shape = tuple(int(d) for d in self.graph.output(contract.SCORES).shape[1:])
        self.classes = self.score_shape[0]
        self.max_batch = 64
        self.input_shape = (3, *self.preprocess.input_size)
        self._optional = {i.name for i in self.graph.session.get_overridable_initializers()}
        self.has_seed = contract.SEED in self._optional
        self._names = [
            contract.SCORES,
            contract.TARGET_USED,
            *(f(layer) for f in (contract.activation_name, contract.gradient_name) for layer in self.layers),
        ]

    @property
    def any_size(self) -> bool:
        """Whether the graph takes inputs of any height and width (exported with dynamic H×W)."""
        shape = next(i.shape for i in self.graph.session.get_inputs() if i.name == contract.INPUT)
        return len(shape) == 4 and not any(isinstance(d, int) for d in shape[2:])

    def check_keep_size(self) -> None:
        """Raise ``ValueError`` (one line) unless :attr:`any_size`: images cannot keep their size."""
        if not self.any_size:
            h, w = self.preprocess.input_size
            raise ValueError(
                f"keep-size: this explainer graph takes {h}x{w} inputs only (exported with a fixed or pinned height "
                "and width); export from an ONNX file with dynamic H/W, or drop keep-size to resize the images"
            )

    @property
    def provider(self) -> str:
        """The execution provider running the graph (``CUDAExecutionProvider`` or ``CPUExecutionProvider``)."""
        return self.graph.providers[0]

    def label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else None

    def targets(self, target: Target | Sequence[Target], n: int) -> np.ndarray:
        """Per-image class indices (``-1`` = top-1) from one target for all images or one per image."""
        per_image = list(target) if isinstance(target, (list, tuple)) else [target] * n
        if len(per_image) != n:
            raise ValueError(f"{len(per_image)} targets for {n} images")
        return np.array([resolve_target(t, self.labels, self.classes) for t in per_image], np.int64)

    def _feeds(
        self,
        x: np.ndarray,
        target: np.ndarray | None = None,
        seed: np.ndarray | None = None,
        compute: tuple[str, ...] = (contract.GRADIENTS_SWITCH,),
    ) -> dict:
        """Feeds for one run; ``compute``: the switches to turn on (every other one of the graph is turned off)."""
        feeds: dict[str, np.ndarray] = {
            contract.INPUT: np.ascontiguousarray(x, np.float32),
            contract.TARGET: np.full(len(x), contract.TOP1, np.int64) if target is None else target,
        }
        for name in self._optional:
            if name.startswith(contract.SWITCH_PREFIX):
                feeds[name] = np.array(name in compute)
        if seed is not None:
            if not self.has_seed:
                raise ValueError("this graph has no 'seed' input: re-export it with this onnxcam to explain seeds")
            feeds[contract.SEED] = np.ascontiguousarray(np.broadcast_to(seed, (len(x), *self.score_shape)), np.float32)
        return feeds

    def run(self, x: np.ndarray, target: np.ndarray, seed: np.ndarray | None = None) -> GraphOutputs:
        """One session run on a preprocessed batch ``x`` ``[N, 3, H, W]`` with class indices ``target`` ``[N]``.

        ``seed`` ``[N, *S]`` (optional): explain ``Σ seed ⊙ scores`` instead, for images whose seed row is non-zero.
        """
        values = self.graph.session.run(self._names, self._feeds(x, target, seed))
        out = dict(zip(self._names, values, strict=True))
        return GraphOutputs(
            scores=out[contract.SCORES],
            target_used=out[contract.TARGET_USED],
            activations={layer: out[contract.activation_name(layer)] for layer in self.layers},
            gradients={layer: out[contract.gradient_name(layer)] for layer in self.layers},
        )

    def _chunked(self, names: list[str], feeds: Callable[[slice], dict], count: int) -> np.ndarray:
        """Run ``names[0]`` over ``count`` rows in chunks of ``max_batch``; ``feeds(rows)`` gives a chunk's feeds."""
        parts = [
            self.graph.session.run(names, feeds(slice(i, i + self.max_batch)))[0]
            for i in range(0, count, self.max_batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, *self.score_shape), np.float32)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` of preprocessed inputs ``x`` (forward pass only, in chunks of ``max_batch``)."""
        return self._chunked([contract.SCORES], lambda rows: self._feeds(x[rows], compute=()), len(x))

    def input_gradient(self, x: np.ndarray, seed: np.ndarray, rule: str = "standard") -> np.ndarray:
        """``∂ Σ(seed ⊙ scores(x)) / ∂x`` ``[M, C, H, W]`` with the ReLU backward ``rule`` (exported in the graph)."""
        if rule not in self.metadata.input_gradients:
            have = ", ".join(self.metadata.input_gradients) or "none"
            raise ValueError(
                f"this graph has no '{rule}' input gradient (it has: {have}); re-export it with --input-gradient {rule}"
            )
        seed = np.broadcast_to(seed, (len(x), *self.score_shape))
        name = contract.input_gradient_name(rule)
        on = (contract.switch_name(name),)
        return self._chunked([name], lambda rows: self._feeds(x[rows], seed=seed[rows], compute=on), len(x))

    def head_scores(self, layer: str, activations: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` from feature maps ``[M, C, h, w]`` of ``layer``: only the part after it runs."""
        if layer not in self.metadata.heads:
            raise ValueError(
                f"this graph has no head graph for layer '{layer}' (heads: {', '.join(self.metadata.heads) or 'none'});"
                " re-export it with this onnxcam"
            )
        name = contract.head_scores_name(layer)
        no_images = np.zeros((0, *self.input_shape), np.float32)  # the network before the layer runs on nothing

        def feeds(rows: slice) -> dict:
            maps = np.ascontiguousarray(activations[rows], np.float32)
            return {
                **self._feeds(no_images, compute=(contract.switch_name(name),)),
                contract.head_input_name(layer): maps,
            }

        return self._chunked([name], feeds, len(activations))

    def explain_arrays(
        self,
        x: np.ndarray,
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
        seed: np.ndarray | None = None,
        options: dict[str, Any] | None = None,
        metrics: Sequence[str] = (),
    ) -> list[Explanation]:
        """Explain a preprocessed batch ``x`` ``[N, 3, H, W]``; maps come at ``H×W``.

        ``seed`` ``[N, *S]`` or ``[*S]``: explain ``Σ seed ⊙ scores`` (rows of zeros fall back to ``target``).
        ``options``: parameters of the perturbation and input-gradient methods and of the metrics
        (e.g. ``{"steps": 32}``). ``metrics``: faithfulness metrics to score every map with (forward passes only).
        """
        layers = list(layers or self.layers)
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown:
            raise ValueError(f"layer '{unknown[0]}' is not in this graph; it has: {', '.join(self.layers)}")
        if seed is not None:
            seed = np.broadcast_to(np.asarray(seed, np.float32), (len(x), *self.score_shape))
        out = self.run(x, self.targets(target, len(x)), seed)
        used = out.target_used
        effective = one_hot_seed(np.maximum(used, 0), self.score_shape)
        if seed is not None:
            effective[used < 0] = seed[used < 0]
        results = self._results(out.scores, used, objective(out.scores, effective), topk)
        request = MethodRequest(
            self,
            x,
            effective,
            out.scores,
            {layer: out.activations[layer] for layer in layers},
            {layer: out.gradients[layer] for layer in layers},
            options or {},
        )
        size = (x.shape[3], x.shape[2])
        for name in methods:
            method = get_method(name)
            computed = self._method_maps(method, out, request, layers, size, eigen_smooth)
            for n, result in enumerate(results):
                result.maps[method.name] = computed.final[n]
                if computed.raw is not None:
                    result.raw[method.name] = {layer: computed.raw[layer][n] for layer in layers}
                if computed.attributions is not None:
                    result.attributions[method.name] = computed.attributions[n]
                if computed.details:
                    result.details[method.name] = {k: float(v[n]) for k, v in computed.details.items()}
        if metrics:
            from .metrics import evaluate_maps  # numpy-only, but loaded only when scores are asked for

            maps = {m: np.stack([r.maps[m] for r in results]) for m in results[0].maps} if results else {}
            for result, scored in zip(results, evaluate_maps(self, x, effective, maps, metrics, options), strict=True):
                result.metrics = scored
        return results

    def _results(self, scores: np.ndarray, used: np.ndarray, explained: np.ndarray, topk: int) -> list[Explanation]:
        """One :class:`Explanation` per image with its class, explained score and top-k classes (no maps yet)."""
        probs = softmax(class_scores(scores))
        k = max(1, min(topk, probs.shape[1]))
        best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(best, np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1), axis=1)
        order = order[:, : max(topk, 0)]
        return [
            Explanation(
                class_index=c,
                label=self.label(c),
                score=float(explained[n]),
                probability=float(probs[n, c]) if c >= 0 else float("nan"),
                topk=[(int(k), self.label(int(k)), float(probs[n, k])) for k in order[n]],
            )
            for n, c in enumerate(used.tolist())
        ]

    def _method_maps(
        self,
        method: CamMethod | ModelMethod,
        out: GraphOutputs,
        request: MethodRequest,
        layers: Sequence[str],
        size: tuple[int, int],
        eigen_smooth: bool,
    ) -> MethodMaps:
        """Run one method on the batch: the final ``[0, 1]`` maps at ``size = (W, H)`` and what they came from."""
        if isinstance(method, ModelMethod) and method.resolution == "input":
            attributions, details = method(request)
            reduce = method.reduce or (lambda a: np.abs(a).sum(axis=1))
            return MethodMaps(normalize(reduce(attributions)), None, attributions, details)
        raw: dict[str, np.ndarray] = {}
        details: dict[str, np.ndarray] = {}
        for layer in layers:
            if isinstance(method, ModelMethod):
                raw[layer], found = method(request, layer)
                details.update(found)
            else:
                grads = out.gradients[layer]
                weights = head_weights(grads) if method.needs_head_weights else None
                raw[layer] = method(out.activations[layer], grads, eigen_smooth=eigen_smooth, head_weights=weights)
        return MethodMaps(fuse([layer_map(raw[layer], size) for layer in layers]), raw, None, details)

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
        seed: np.ndarray | None = None,
        options: dict[str, Any] | None = None,
        metrics: Sequence[str] = (),
        keep_size: bool = False,
    ) -> list[Explanation]:
        """Explain images (paths or RGB uint8 arrays of any size); maps at network resolution, see ``image_size``.

        ``seed``, ``options`` and ``metrics`` as in :meth:`explain_arrays`. ``keep_size``: feed each image at its own
        size, unresized (one run per image; the graph must take any H×W, see :meth:`check_keep_size`).
        """
        batch = (
            [images]
            if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3)
            else images
        )
        decoded = [read_image(i) if isinstance(i, (str, Path)) else i for i in batch]
        args = (methods, layers, topk, eigen_smooth, seed, options, metrics)
        if keep_size:
            self.check_keep_size()
            classes = self.targets(target, len(decoded))
            results = [
                self.explain_arrays(preprocess(image, self.preprocess, keep_size=True)[None], int(c), *args)[0]
                for image, c in zip(decoded, classes, strict=True)
            ]
        else:
            results = self.explain_arrays(preprocess_batch(decoded, self.preprocess), target, *args)
        for result, image in zip(results, decoded, strict=True):
            result.image_size = image.shape[:2]
        return results

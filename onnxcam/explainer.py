"""The Python API: an :class:`Explainer` over one explainer graph turns images into CAM maps (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import contract
from .images import read_image
from .methods import get_method
from .model_file import ExplainerGraph, open_graph
from .postprocess import fuse, layer_map
from .preprocess import preprocess_batch
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


@dataclass
class Explanation:
    """The explanation of one image.

    ``maps[method]``: final map at network input resolution, values in [0, 1] (layers fused).
    ``raw[method][layer]``: the un-normalised map at layer resolution (compare magnitudes across images).
    ``topk``: ``(class index, label, probability)`` from the softmax of the logits.
    """

    class_index: int
    label: str | None
    score: float
    probability: float
    topk: list[tuple[int, str | None, float]]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    raw: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None  # original (H, W) when known


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stable probabilities."""
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
        self.classes = int(self.graph.output(contract.SCORES).shape[-1])
        self._names = [o.name for o in self.graph.outputs]

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

    def run(self, x: np.ndarray, target: np.ndarray) -> GraphOutputs:
        """One session run on a preprocessed batch ``x`` ``[N, 3, H, W]`` with class indices ``target`` ``[N]``."""
        values = self.graph.session.run(
            self._names, {contract.INPUT: np.ascontiguousarray(x, np.float32), contract.TARGET: target}
        )
        out = dict(zip(self._names, values, strict=True))
        return GraphOutputs(
            scores=out[contract.SCORES],
            target_used=out[contract.TARGET_USED],
            activations={layer: out[contract.activation_name(layer)] for layer in self.layers},
            gradients={layer: out[contract.gradient_name(layer)] for layer in self.layers},
        )

    def explain_arrays(
        self,
        x: np.ndarray,
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
    ) -> list[Explanation]:
        """Explain a preprocessed batch ``x`` ``[N, 3, H, W]``; maps come at ``H×W``."""
        layers = list(layers or self.layers)
        unknown = [layer for layer in layers if layer not in self.layers]
        if unknown:
            raise ValueError(f"layer '{unknown[0]}' is not in this graph; it has: {', '.join(self.layers)}")
        out = self.run(x, self.targets(target, len(x)))
        probs = softmax(out.scores)
        size = (x.shape[3], x.shape[2])
        k = max(1, min(topk, probs.shape[1]))
        best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(best, np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1), axis=1)
        order = order[:, : max(topk, 0)]
        results = []
        for n, c in enumerate(out.target_used.tolist()):
            results.append(
                Explanation(
                    class_index=c,
                    label=self.label(c),
                    score=float(out.scores[n, c]),
                    probability=float(probs[n, c]),
                    topk=[(int(k), self.label(int(k)), float(probs[n, k])) for k in order[n]],
                )
            )
        for name in methods:
            method = get_method(name)
            raw = {
                layer: method(
                    out.activations[layer],
                    out.gradients[layer],
                    eigen_smooth=eigen_smooth,
                    head_weights=head_weights(out.gradients[layer]) if method.needs_head_weights else None,
                )
                for layer in layers
            }
            final = fuse([layer_map(raw[layer], size) for layer in layers])
            for n, result in enumerate(results):
                result.maps[method.name] = final[n]
                result.raw[method.name] = {layer: raw[layer][n] for layer in layers}
        return results

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        target: Target | Sequence[Target] = None,
        methods: Sequence[str] = ("gradcam",),
        layers: Sequence[str] | None = None,
        topk: int = 5,
        eigen_smooth: bool = False,
    ) -> list[Explanation]:
        """Explain images (paths or RGB uint8 arrays of any size); maps at network resolution, see ``image_size``."""
        batch = (
            [images]
            if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3)
            else images
        )
        decoded = [read_image(i) if isinstance(i, (str, Path)) else i for i in batch]
        results = self.explain_arrays(
            preprocess_batch(decoded, self.preprocess), target, methods, layers, topk, eigen_smooth
        )
        for result, image in zip(results, decoded, strict=True):
            result.image_size = image.shape[:2]
        return results

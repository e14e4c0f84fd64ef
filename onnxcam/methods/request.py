"""What perturbation and input-gradient methods receive: the batch, its outputs, and access to the model.

CAM methods are pure functions of ``(A, G)``. The other families need to run the model again: on masked inputs
(Score-CAM, occlusion, RISE), on ablated feature maps through the part after the layer (Ablation-CAM), or for the
gradient with respect to the input (saliency, guided backprop, SmoothGrad, Integrated Gradients), or for the layer
gradients of other seeds or noisy inputs (FinerCAM, Smooth Grad-CAM++). They get a
:class:`ModelAccess`, which :class:`onnxcam.Explainer` implements on onnxruntime (tests may implement it otherwise).

The explained quantity of image ``n`` is ``y_n = Σ seed_n ⊙ scores_n`` (docs/METHODS.md, Targets): ``seed_n`` is the
one-hot of the target class for ordinary class targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class ModelAccess(Protocol):
    """The model, as the methods may query it. Arrays are float32; batches of any size are accepted."""

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` of preprocessed inputs ``x`` ``[M, C, H, W]`` (forward pass only)."""
        ...

    def input_gradient(self, x: np.ndarray, seed: np.ndarray, rule: str = "standard") -> np.ndarray:
        """``∂ Σ(seed ⊙ scores(x)) / ∂x`` per input, ``[M, C, H, W]``, with the ReLU backward ``rule``."""
        ...

    def head_scores(self, layer: str, activations: np.ndarray) -> np.ndarray:
        """Logits ``[M, *S]`` computed from feature maps ``[M, C, h, w]`` of ``layer`` (only the part after it)."""
        ...

    def layer_outputs(self, x: np.ndarray, seed: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Activations ``A`` and gradients ``∂ Σ(seed ⊙ scores(x)) / ∂A`` of every layer of the graph for inputs
        ``x`` ``[M, C, H, W]`` and seeds ``[M, *S]``: two dicts of ``[M, K, h, w]`` by layer name."""
        ...

    def bias_gradients(self, x: np.ndarray, seed: np.ndarray) -> list[np.ndarray]:
        """FullGrad's terms for inputs ``x`` ``[M, C, H, W]`` and seeds ``[M, *S]``: ``x ⊙ ∂y/∂x`` ``[M, C, H, W]``
        first, then ``b ⊙ ∂y/∂z`` ``[M, K, h, w]`` of every biased convolution or batch norm (``--bias-gradients``)."""
        ...

    def hvp(self, x: np.ndarray, seed: np.ndarray) -> dict[str, np.ndarray]:
        """Hessian-vector products ``H·A`` ``[M, K, h, w]`` by layer name (``--hvp``): ``H`` the Hessian of
        ``Σ(seed ⊙ scores(x))`` in the layer's activation ``A``."""
        ...


def objective(scores: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """``y_n = Σ seed_n ⊙ scores_n`` per row: ``[M, *S] × [M or 1, *S] → [M]`` (float64 sum)."""
    return (scores.astype(np.float64) * seed).reshape(len(scores), -1).sum(axis=1)


@dataclass(frozen=True)
class MethodRequest:
    """One batch to explain with a model-querying method.

    ``x``: preprocessed inputs ``[N, C, H, W]``. ``seed``: ``[N, *S]``, the explained quantity's weights.
    ``scores``, ``activations[layer]``, ``gradients[layer]``: the explainer graph's outputs for ``x``.
    ``options``: the method's parameters (e.g. ``{"steps": 50}``); unknown keys are ignored by methods.
    ``scores_kind``: what the scores are (:mod:`onnxcam.scores`), for methods that use probabilities.
    """

    model: ModelAccess
    x: np.ndarray
    seed: np.ndarray
    scores: np.ndarray
    activations: Mapping[str, np.ndarray] = field(default_factory=dict)
    gradients: Mapping[str, np.ndarray] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    scores_kind: str = "logits"

    @property
    def target_scores(self) -> np.ndarray:
        """``y_n`` of the unperturbed inputs ``[N]``."""
        return objective(self.scores, self.seed)

    def option(self, name: str, default: Any) -> Any:
        """The parameter ``name``, or ``default`` when not given."""
        value = self.options.get(name)
        return default if value is None else value


@dataclass(frozen=True)
class ModelMethod:
    """A method that queries the model (perturbation or input-gradient family); registered like a :class:`CamMethod`.

    ``resolution``: ``"layer"`` — ``fn(request, layer)`` gives a raw map ``[N, h, w]`` per layer, post-processed and
    fused exactly like a CAM; ``"input"`` — ``fn(request, None)`` gives attributions ``[N, C, H, W]``, turned into a
    map by ``reduce`` (``[N, C, H, W] → [N, H, W]``) and min-max normalisation.
    ``rules``: the input-gradient ReLU rules it needs in the graph; ``needs_head``: it runs the part after the layer.
    ``refusal(explainer, layers)``: why a graph cannot serve it (one line naming the way out), or ``None``.
    """

    name: str
    fn: Callable[[MethodRequest, str | None], Any]
    summary: str
    resolution: str
    rules: tuple[str, ...] = ()
    needs_head: bool = False
    reduce: Callable[[np.ndarray], np.ndarray] | None = None
    refusal: Callable[[Any, Sequence[str]], str | None] | None = None

    def __call__(self, request: MethodRequest, layer: str | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``(maps or attributions as float32, per-image details)``."""
        out = self.fn(request, layer)
        values, details = out if isinstance(out, tuple) else (out, {})
        return np.asarray(values, dtype=np.float32), details

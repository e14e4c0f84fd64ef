"""Feature visualisation by activation maximisation: the image that raises a class score or a unit's value, by
gradient ascent on the input with onnxruntime alone (numpy + OpenCV; the graph's ``gradient:input`` output).

Erhan, Bengio, Courville & Vincent 2009, "Visualizing Higher-Layer Features of a Deep Network"; Simonyan, Vedaldi &
Zisserman 2014 (class models); the regularisers of Yosinski et al. 2015, "Understanding Neural Networks Through Deep
Visualization" (L2 decay, Gaussian blur) and Olah, Mordvintsev & Schubert 2017, "Feature Visualization" (Distill;
transformation robustness by jitter). The image ``p`` ``[C, H, W]`` in ``[0, 1]`` (pixel/255, the model's channels)
is optimised; the network sees ``x = (255·p·value_scale − mean) / std``. Each step ``t``:

1. jitter: roll ``p`` by a random ``(dy, dx)`` in ``[−jitter, jitter]``;
2. ``g = ∂y/∂p`` of the rolled image, rolled back (``y = Σ seed ⊙ scores``, or ``Σ unit_seed ⊙ U`` for a unit);
3. ascent with a normalised step: ``p ← p + lr_t · g / mean|g|``, ``lr_t`` decaying linearly from ``lr`` to
   ``lr/10`` over the steps (late steps refine instead of oscillating);
4. L2 decay towards grey: ``p ← 0.5 + (1 − l2)(p − 0.5)``;
5. every ``blur_every`` steps, a Gaussian blur of width ``blur_sigma`` pixels; ``p`` clipped to ``[0, 1]``.

The start image is grey plus uniform noise of ±``noise`` drawn from ``seed`` (or a given image): the same seed
gives the same picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from . import progress
from .methods.request import objective
from .scores import class_seed, class_set_seed
from .targets import ClassSet, TargetError
from .units import UnitAccess, UnitTarget

if TYPE_CHECKING:
    from .explainer import Explainer
    from .methods.request import ModelAccess
    from .targets import Target


@dataclass(frozen=True)
class Settings:
    """Gradient-ascent parameters (see the module docstring)."""

    steps: int = 256
    lr: float = 0.05
    jitter: int = 4
    l2: float = 1e-3
    blur_every: int = 4
    blur_sigma: float = 0.5
    noise: float = 0.1
    seed: int = 0

    def problem(self) -> str | None:
        """Why these settings cannot run (one line), or ``None``."""
        if self.steps < 1:
            return f"steps must be at least 1, got {self.steps}"
        if not self.lr > 0:
            return f"lr must be positive, got {self.lr}"
        if self.jitter < 0 or self.blur_every < 0 or self.blur_sigma < 0 or not 0 <= self.l2 < 1:
            return "jitter, blur_every and blur_sigma must be ≥ 0 and l2 in [0, 1)"
        return None


@dataclass(frozen=True)
class Visualization:
    """The image (uint8 RGB ``[H, W, 3]``, or ``[H, W]`` grey for 1 channel), the objective ``y`` of the start and
    final images, and ``y`` after every step (``history`` ``[steps]``, measured on the un-jittered image)."""

    image: np.ndarray
    start: float
    final: float
    history: np.ndarray


def objective_access(explainer: Explainer, target: Target) -> tuple[ModelAccess, np.ndarray, str]:
    """The model view, the seed ``[*S]`` (or ``[*U]`` of a unit) and a name of what ``target`` maximises: a class,
    a set of classes or a unit; top-1 is refused (there is no image to take it from)."""
    resolved = explainer.resolve_target(target)
    if isinstance(resolved, UnitTarget):
        return UnitAccess(explainer), resolved.seed, resolved.name
    if isinstance(resolved, ClassSet):
        seed = class_set_seed(resolved.classes, explainer.scores_kind, explainer.score_shape)
        return explainer, seed, " + ".join(explainer.label(k) or f"class {k}" for k in resolved.classes)
    if resolved < 0:
        raise TargetError("visualize needs a class (index or label) or a unit target, not top1")
    seed = class_seed(np.array([resolved]), explainer.scores_kind, explainer.score_shape)[0]
    label = explainer.label(resolved)
    return explainer, seed, f"class {resolved}" + (f" ({label})" if label else "")


def visualize(
    explainer: Explainer, target: Target, settings: Settings | None = None, start: np.ndarray | None = None
) -> Visualization:
    """Maximise ``target``'s score (a class, a set of classes or a unit) over the input by regularised gradient ascent.

    ``start``: ``[C, H, W]`` pixels in ``[0, 1]`` (default: grey + noise from ``settings.seed``). Needs the graph's
    standard input gradient (export with ``--input-gradient standard``). Raises ``ValueError`` in one line otherwise,
    and when the gradient is zero at every step (a unit that is off for the start image).
    """
    settings = settings or Settings()
    problem = settings.problem()
    if problem:
        raise ValueError(problem)
    if "standard" not in explainer.metadata.input_gradients:
        raise ValueError("visualize needs the input gradient: re-export the graph with --input-gradient standard")
    model, seed, _ = objective_access(explainer, target)
    spec = explainer.preprocess
    shape = (spec.channels, *spec.input_size)
    rng = np.random.default_rng(settings.seed)
    p = np.clip(0.5 + rng.uniform(-settings.noise, settings.noise, shape), 0, 1) if start is None else start
    p = np.asarray(p, np.float32).copy()
    scale, offset = _affine(explainer)

    def value(image: np.ndarray) -> float:
        return float(objective(model.scores((image * scale + offset)[None]), seed[None])[0])

    first = value(p)
    history = np.empty(settings.steps)
    moved = False
    bar = progress.bar(settings.steps, "visualize", unit="step")
    try:
        for t in range(settings.steps):
            dy, dx = rng.integers(-settings.jitter, settings.jitter + 1, 2) if settings.jitter else (0, 0)
            shifted = np.roll(p, (dy, dx), axis=(1, 2))
            g = model.input_gradient((shifted * scale + offset)[None], seed[None], "standard")[0] * scale
            g = np.roll(g, (-dy, -dx), axis=(1, 2))
            moved = moved or bool(np.any(g))
            rate = settings.lr * (1 - 0.9 * t / max(settings.steps - 1, 1))
            p += rate * g / (np.abs(g).mean() + 1e-12)
            p = 0.5 + (1 - settings.l2) * (p - 0.5)
            if settings.blur_every and settings.blur_sigma > 0 and (t + 1) % settings.blur_every == 0:
                p = _blur(p, settings.blur_sigma)
            p = np.clip(p, 0, 1).astype(np.float32)
            history[t] = value(p)
            bar.update(1)
    finally:
        bar.close()
    if not moved:
        raise ValueError(
            "the target's gradient was zero at every step (a unit switched off, e.g. a ReLU channel, for this start "
            "image): try another --seed or another unit"
        )
    image = np.uint8(np.round(255 * p.transpose(1, 2, 0)))
    if spec.channel_order == "BGR":
        image = image[..., ::-1]
    return Visualization(image[..., 0] if spec.channels == 1 else image, first, float(history[-1]), history)


def _affine(explainer: Explainer) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` ``[C, 1, 1]`` with ``x = p · scale + offset`` (pixels ``p`` in ``[0, 1]``, channel order of
    the input): ``scale = 255 · value_scale / std``, ``offset = −mean / std``."""
    spec = explainer.preprocess
    mean = np.asarray(spec.per_channel(spec.mean), np.float32)[:, None, None]
    std = np.asarray(spec.per_channel(spec.std), np.float32)[:, None, None]
    return np.float32(255 * spec.value_scale) / std, -mean / std


def _blur(p: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of each channel of ``p`` ``[C, H, W]`` (OpenCV, reflected borders)."""
    return np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in p])

"""A drop-in for code written against pytorch-grad-cam (PyPI ``grad-cam`` 1.5.x), on an explainer graph instead of a
PyTorch model (no torch needed)::

    from onnxcam.compat import GradCAM, ClassifierOutputTarget, preprocess_image, show_cam_on_image

    x = preprocess_image(rgb_float, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])  # [1, 3, H, W]
    with GradCAM(model="resnet50.onnx", target_layers=["layer4"]) as cam:
        grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)], aug_smooth=True)  # [N, H, W]
    picture = show_cam_on_image(rgb_float, grayscale[0], use_rgb=True)

What changes from pytorch-grad-cam: ``model`` is the explainer graph's path (or an :class:`~onnxcam.Explainer`) and
``target_layers`` are layer *names* of that graph (``onnxcam info`` lists them; ``None`` = all of them, fused). One
class per CAM method onnxcam has: :class:`GradCAM`, :class:`HiResCAM`, :class:`GradCAMPlusPlus`, :class:`XGradCAM`,
:class:`LayerCAM`, :class:`EigenCAM`, :class:`EigenGradCAM`, :class:`GradCAMElementWise`, :class:`ScoreCAM`,
:class:`AblationCAM`, and :class:`GuidedBackpropReLUModel` (with :func:`deprocess_image`). Targets are the linear
ones, ``y = Σ seed ⊙ scores`` (docs/METHODS.md, Targets): :class:`ClassifierOutputTarget`,
:class:`BinaryClassifierOutputTarget`, :class:`RawScoresOutputTarget`, :class:`SemanticSegmentationTarget`.
``aug_smooth`` is pytorch-grad-cam's test-time augmentation (its default ttach
transforms: horizontal flip × multiply by 0.9, 1, 1.1; the map of each augmented input, de-augmented, averaged);
``eigen_smooth`` the first-principal-component projection. A batch whose size does not match the graph's input
raises one ValueError naming both shapes; a graph exported with dynamic H×W (``onnxcam info``: ``[N, 3, H, W]``)
takes a batch of any one size, maps at that size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .augment import AUGMENTATIONS, augment, deaugment
from .explainer import Explainer
from .preprocess import preprocess_batch
from .visual import show_cam_on_image

__all__ = [
    "AblationCAM",
    "BinaryClassifierOutputTarget",
    "ClassifierOutputTarget",
    "EigenCAM",
    "EigenGradCAM",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "LayerCAM",
    "RawScoresOutputTarget",
    "ScoreCAM",
    "SemanticSegmentationTarget",
    "XGradCAM",
    "deprocess_image",
    "preprocess_image",
    "show_cam_on_image",
]


@dataclass(frozen=True)
class ClassifierOutputTarget:
    """Explain the logit of class ``category``."""

    category: int

    def seed(self, score_shape: tuple[int, ...]) -> np.ndarray | None:
        return None  # a plain class target: the graph's own one-hot


@dataclass(frozen=True)
class BinaryClassifierOutputTarget:
    """A side of a single-logit sigmoid head: ``category`` 1 explains the logit, 0 its negative (pytorch-grad-cam's
    target of the same name; the sides are the head's classes 0 and 1, :mod:`onnxcam.scores`)."""

    category: int

    def seed(self, score_shape: tuple[int, ...]) -> np.ndarray | None:
        return None  # the head's side ``category``: a class of the explainer


@dataclass(frozen=True)
class RawScoresOutputTarget:
    """Explain the sum of all the scores (what ``backward`` of the raw output gives for a one-output model)."""

    def seed(self, score_shape: tuple[int, ...]) -> np.ndarray:
        return np.ones(score_shape, np.float32)


@dataclass(frozen=True)
class SemanticSegmentationTarget:
    """A dense output ``[K, H, W]``: explain ``Σ mask ⊙ scores[category]``."""

    category: int
    mask: Any = field(compare=False)

    def seed(self, score_shape: tuple[int, ...]) -> np.ndarray:
        mask = _numpy(self.mask)
        if len(score_shape) != 3 or mask.shape != tuple(score_shape[1:]):
            raise ValueError(
                f"SemanticSegmentationTarget: mask {mask.shape} must match the output's [H, W] {score_shape}"
            )
        seed = np.zeros(score_shape, np.float32)
        seed[self.category] = mask
        return seed


def preprocess_image(
    img: np.ndarray, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5)
) -> np.ndarray:
    """pytorch-grad-cam's ``preprocess_image``: float ``[H, W, C]`` in ``[0, 1]`` → ``[1, C, H, W]`` float32,
    ``(img − mean) / std`` (a numpy array where the reference returns a tensor). To apply the graph's own
    preprocessing to images of any size instead, use :meth:`BaseCAM.preprocess`."""
    x = (np.asarray(img, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


class BaseCAM:
    """One CAM method over an explainer graph with pytorch-grad-cam's calling convention (see the module docstring).

    ``model``: graph path or :class:`~onnxcam.Explainer`; ``target_layers``: layer names (``None``: all, fused);
    ``provider``: onnxruntime execution provider (``auto``, ``cpu``, ``cuda``). ``reshape_transform`` must be
    ``None``: token and channels-last layers are laid out at export.
    """

    method = "gradcam"

    def __init__(
        self,
        model: str | Path | Explainer,
        target_layers: Sequence[str] | None = None,
        reshape_transform: Any = None,
        provider: str = "auto",
    ) -> None:
        if reshape_transform is not None:
            raise ValueError("reshape_transform is not used: the export lays token/channels-last layers out as maps")
        self.explainer = model if isinstance(model, Explainer) else Explainer(model, provider=provider)
        layers = [target_layers] if isinstance(target_layers, str) else list(target_layers or [])
        unknown = [layer for layer in layers if not isinstance(layer, str) or layer not in self.explainer.layers]
        if unknown:
            raise ValueError(
                f"target layer {unknown[0]!r} is not in this graph; give layer names, one of: "
                f"{', '.join(self.explainer.layers)}"
            )
        self.target_layers = layers or None
        self.options: dict[str, Any] = {}

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images of any size → the graph's input ``[N, C, H, W]`` (its own resize, mean and std)."""
        return preprocess_batch(list(images), self.explainer.preprocess)

    def __call__(
        self,
        input_tensor: Any,
        targets: Sequence[Any] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> np.ndarray:
        """Final maps ``[N, H, W]`` in ``[0, 1]`` of a preprocessed batch ``[N, C, H, W]`` (numpy, or a CPU tensor);
        ``targets``: one per image (``None``: each image's top-1)."""
        x = self._batch(input_tensor)
        if eigen_smooth and self.method in ("scorecam", "ablationcam"):
            raise ValueError(f"eigen_smooth is not available for {type(self).__name__} in onnxcam; call without it")
        if targets is not None and len(targets) != len(x):
            raise ValueError(f"{len(targets)} targets for a batch of {len(x)} inputs: give one per input")
        if not aug_smooth:
            return self.forward(x, targets, eigen_smooth)
        cams = []
        for flip, factor in AUGMENTATIONS:  # each copy's own targets (top-1 of the copy when None), as the reference
            cams.append(deaugment(self.forward(augment(x, flip, factor), targets, eigen_smooth), flip))
        return np.mean(np.float32(cams), axis=0)

    def forward(self, x: np.ndarray, targets: Sequence[Any] | None, eigen_smooth: bool = False) -> np.ndarray:
        """The maps of one batch, without augmentation."""
        classes, seed = self._targets(targets, len(x))
        results = self.explainer.explain_arrays(
            x, classes, [self.method], self.target_layers, eigen_smooth=eigen_smooth, seed=seed, options=self.options
        )
        for n, result in enumerate(results):  # e.g. an int8 score clipped at its range: a blank map, said so
            for line in result.warnings:
                warnings.warn(f"input {n}: {line}", RuntimeWarning, stacklevel=3)
        return np.stack([r.maps[self.method] for r in results])

    def _batch(self, input_tensor: Any) -> np.ndarray:
        return _input_batch(self.explainer, input_tensor)

    def _targets(self, targets: Sequence[Any] | None, n: int) -> tuple[list[int] | None, np.ndarray | None]:
        """Class indices (``-1``: top-1) and, when a target is not a plain class, the seed rows ``[N, *S]``."""
        if targets is None:
            return None, None
        classes, rows = [], []
        for target in targets:
            if not hasattr(target, "seed"):
                raise ValueError(
                    f"target {type(target).__name__} is not supported: onnxcam explains linear targets "
                    "(ClassifierOutputTarget, BinaryClassifierOutputTarget, RawScoresOutputTarget, "
                    "SemanticSegmentationTarget)"
                )
            row = target.seed(self.explainer.score_shape)
            classes.append(self._class(target) if row is None else -1)
            rows.append(np.zeros(self.explainer.score_shape, np.float32) if row is None else row)
        seeded = any(c < 0 for c in classes)
        return [max(c, 0) if seeded else c for c in classes], np.stack(rows) if seeded else None

    def _class(self, target: Any) -> int:
        """The explainer's class for a plain pytorch-grad-cam class target. On a single-logit head the classes are
        its sides (0 = negative), so ``ClassifierOutputTarget(0)`` — the logit itself in pytorch-grad-cam — is 1."""
        binary = self.explainer.binary
        if isinstance(target, BinaryClassifierOutputTarget) and not binary:
            raise ValueError("BinaryClassifierOutputTarget needs a single-logit sigmoid head ([N, 1] scores)")
        if isinstance(target, BinaryClassifierOutputTarget) or not binary:
            return int(target.category)
        if target.category != 0:
            raise ValueError(f"ClassifierOutputTarget({target.category}): this head has one logit (category 0)")
        return 1

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class GuidedBackpropReLUModel:
    """pytorch-grad-cam's ``GuidedBackpropReLUModel``: ``model(input_img, target_category)`` gives the guided
    backpropagation gradient of the first image's class score, ``[H, W, C]`` (``target_category=None``: its top-1).

    Needs the guided input gradient in the graph (``onnxcam export --input-gradient guided``). ``device``: ``None``,
    ``"cpu"`` or ``"cuda"`` (the onnxruntime provider).
    """

    def __init__(self, model: str | Path | Explainer, device: str | None = None) -> None:
        provider = {"cpu": "cpu", "cuda": "cuda"}.get(str(device).split(":")[0], "auto")
        self.explainer = model if isinstance(model, Explainer) else Explainer(model, provider=provider)
        if "guided" not in self.explainer.metadata.input_gradients:
            raise ValueError("this graph has no guided input gradient; re-export it with --input-gradient guided")

    def __call__(self, input_img: Any, target_category: int | None = None) -> np.ndarray:
        x = _input_batch(self.explainer, input_img)[:1]
        if target_category is None:
            target_category = int(np.argmax(self.explainer.scores(x)))
        seed = np.zeros((1, *self.explainer.score_shape), np.float32)
        seed[0, target_category] = 1.0
        return self.explainer.input_gradient(x, seed, "guided")[0].transpose(1, 2, 0)


def deprocess_image(img: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``deprocess_image``: standardise, scale by 0.1 around 0.5, clip to [0, 1], uint8."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    return np.uint8(np.clip(img * 0.1 + 0.5, 0, 1) * 255)


def _input_batch(explainer: Explainer, input_tensor: Any) -> np.ndarray:
    """``input_tensor`` as float32 ``[N, *explainer.input_shape]`` (any ``H×W`` when the graph takes any size,
    :attr:`~onnxcam.Explainer.any_size`, as pytorch-grad-cam takes what the model takes); any other shape raises
    one ValueError."""
    x = _numpy(input_tensor)
    want = (len(explainer.input_shape) + 1, *explainer.input_shape)
    sized = x.shape[2:] == tuple(want[2:]) or explainer.any_size
    if x.ndim != want[0] or x.shape[1] != want[1] or not sized:
        dims = "×".join(str(d) for d in explainer.input_shape)
        raise ValueError(
            f"input_tensor has shape {tuple(x.shape)}; this graph takes [N, {', '.join(map(str, want[1:]))}] "
            f"(a batch of {dims} inputs): resize first, or use cam.preprocess(images) for the graph's own "
            "preprocessing"
        )
    return np.ascontiguousarray(x, np.float32)


def _numpy(value: Any) -> np.ndarray:
    """A numpy array of ``value``; a torch tensor (never imported here) is detached and moved to the CPU first."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, np.float32)


def _cam_class(name: str, method: str) -> type[BaseCAM]:
    return type(
        name, (BaseCAM,), {"method": method, "__doc__": f"pytorch-grad-cam's ``{name}`` on an explainer graph."}
    )


GradCAM = _cam_class("GradCAM", "gradcam")
GradCAMPlusPlus = _cam_class("GradCAMPlusPlus", "gradcam++")
XGradCAM = _cam_class("XGradCAM", "xgradcam")
HiResCAM = _cam_class("HiResCAM", "hirescam")
GradCAMElementWise = _cam_class("GradCAMElementWise", "gradcamelementwise")
LayerCAM = _cam_class("LayerCAM", "layercam")
EigenCAM = _cam_class("EigenCAM", "eigencam")
EigenGradCAM = _cam_class("EigenGradCAM", "eigengradcam")


class ScoreCAM(BaseCAM):
    """pytorch-grad-cam's ``ScoreCAM``; ``batch_size`` masked inputs per model run (the reference's attribute)."""

    method = "scorecam"

    def __init__(self, *args: Any, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size

    def forward(self, x: np.ndarray, targets: Sequence[Any] | None, eigen_smooth: bool = False) -> np.ndarray:
        self.options = {"batch_size": self.batch_size}
        return super().forward(x, targets, eigen_smooth)


class AblationCAM(BaseCAM):
    """pytorch-grad-cam's ``AblationCAM``: ``batch_size`` ablated maps per head run, ``ratio_channels_to_ablate``
    (the fraction of channels ablated; 1 = all). Needs the graph's head for each layer (exported by default)."""

    method = "ablationcam"

    def __init__(self, *args: Any, batch_size: int = 32, ratio_channels_to_ablate: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size
        self.ratio_channels_to_ablate = ratio_channels_to_ablate

    def forward(self, x: np.ndarray, targets: Sequence[Any] | None, eigen_smooth: bool = False) -> np.ndarray:
        self.options = {"batch_size": self.batch_size, "ablation_fraction": self.ratio_channels_to_ablate}
        return super().forward(x, targets, eigen_smooth)

"""The explainer-graph contract: names of inputs, outputs and metadata keys.

The export stage writes graphs that follow this module; the runtime reads them through it.
Nothing here imports torch or onnx, so both sides can share it.

The explained quantity of image ``n`` is ``y_n = Σ seed_n ⊙ scores_n`` (METHODS.md, Targets): by default the seed is
the one-hot of the target class, so ``y_n`` is that class's logit.

Graph inputs
    ``input``   float32 ``[N, C, H, W]`` preprocessed images (N dynamic).
    ``target``  int64 ``[N]``: class to explain per image, ``-1`` = that image's top-1 prediction.
    ``seed``    optional float32 ``[N, *S]`` shaped like ``scores`` (default: one all-zero row). A non-zero row
                replaces the one-hot of ``target`` for its image (class sets, a region of a dense output, a direction).
    ``head:<layer>``  optional float32 ``[M, C, h, w]``: a feature map fed to the part of the net after ``layer``.

Graph outputs
    ``scores``                the model's logits ``[N, K]`` (classifier) or ``[N, K, H', W']`` (dense output).
    ``target_used``           int64 ``[N]``: the class explained; ``-1`` where a seed row was used.
    ``activation:<layer>``    feature map ``A`` of each tapped layer, ``[N, C, h, w]``.
    ``gradient:<layer>``      ``∂ y_n / ∂ A`` per image, same shape as ``A``.
    ``gradient:input[:rule]`` optional ``∂ y_n / ∂ input`` with the ReLU backward ``rule`` (see ``RELU_RULES``).
    ``head_scores:<layer>``   optional: ``scores`` computed from ``head:<layer>`` (only the part after the layer runs).

Switches: the gradients, input gradients and heads are computed only when their boolean input says so (onnxruntime
runs every node of a graph whatever outputs are requested, so each optional part sits in an ``If``):
``compute:gradients`` (default true) for all ``gradient:<layer>``, ``compute:<output>`` (default false) for each
``gradient:input[:rule]`` and ``head_scores:<layer>``. A part switched off yields an empty ``[0, …]`` tensor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

CONTRACT_VERSION = "1"

INPUT = "input"
TARGET = "target"
SCORES = "scores"
TARGET_USED = "target_used"
ACTIVATION_PREFIX = "activation:"
GRADIENT_PREFIX = "gradient:"
SEED = "seed"
INPUT_GRADIENT = "gradient:input"
HEAD_INPUT_PREFIX = "head:"
HEAD_SCORES_PREFIX = "head_scores:"
SWITCH_PREFIX = "compute:"
GRADIENTS_SWITCH = SWITCH_PREFIX + "gradients"
TOP1 = -1  # value of ``target`` that asks for the top-1 class; also ``target_used`` where a seed row was used

#: ReLU backward rules of the input gradient: ``standard`` (the true gradient), ``guided`` (guided backpropagation,
#: ``x̄ = ḡ·[x > 0]·[ḡ > 0]``) and ``deconvnet`` (``x̄ = ḡ·[ḡ > 0]``); METHODS.md, input-gradient maps.
RELU_RULES = ("standard", "guided", "deconvnet")

META_PREFIX = "onnxcam."
META_VERSION = META_PREFIX + "contract_version"
META_LAYERS = META_PREFIX + "layers"
META_PREPROCESS = META_PREFIX + "preprocess"
META_LABELS = META_PREFIX + "labels"
META_SOURCE = META_PREFIX + "source"
META_EXPORTER = META_PREFIX + "exporter"
META_SCORES_KIND = META_PREFIX + "scores_kind"
META_INPUT_GRADIENTS = META_PREFIX + "input_gradients"
META_HEADS = META_PREFIX + "heads"
META_LAYOUTS = META_PREFIX + "layouts"  # optional; absent = every layer NCHW

#: How a tapped layer's tensor was laid out in the model (``activation:``/``gradient:``/``head:`` are NCHW for all):
#: ``nchw``; ``channels-last`` ``[N, h, w, C]`` (Swin); ``tokens`` ``[N, prefix + h·w, C]`` (ViT: class,
#: distillation or register tokens first; they are dropped from the map, as pytorch-grad-cam's reshape_transform does).
LAYOUTS = ("nchw", "channels-last", "tokens")


def activation_name(layer: str) -> str:
    """Graph output holding the feature map of ``layer``."""
    return ACTIVATION_PREFIX + layer


def gradient_name(layer: str) -> str:
    """Graph output holding ``∂y^c/∂A`` for ``layer``."""
    return GRADIENT_PREFIX + layer


def input_gradient_name(rule: str = "standard") -> str:
    """Graph output of ``∂y/∂input`` with ReLU backward ``rule`` (``gradient:input``, ``gradient:input:guided`` …)."""
    if rule not in RELU_RULES:
        raise ValueError(f"unknown ReLU backward rule {rule!r}; choose from {', '.join(RELU_RULES)}")
    return INPUT_GRADIENT if rule == "standard" else f"{INPUT_GRADIENT}:{rule}"


def switch_name(output: str) -> str:
    """Boolean graph input that turns the optional ``output`` on (``compute:gradient:input``, …)."""
    return SWITCH_PREFIX + output


def head_input_name(layer: str) -> str:
    """Graph input feeding a feature map of ``layer`` to the part of the network after it."""
    return HEAD_INPUT_PREFIX + layer


def head_scores_name(layer: str) -> str:
    """Graph output holding the scores computed from :func:`head_input_name` ``(layer)``."""
    return HEAD_SCORES_PREFIX + layer


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the ``input`` tensor: ``((resize(img) * scale) - mean) / std`` in ``channel_order``.

    ``input_size`` is ``(H, W)``; ``value_scale`` maps uint8 pixels to the model's range (``1/255`` → ``[0, 1]``).
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    value_scale: float = 1.0 / 255.0
    resize: str = "bilinear"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        raw: dict[str, Any] = json.loads(text)
        for key in ("input_size", "mean", "std"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)


@dataclass(frozen=True)
class Layout:
    """The original layout of a tapped layer (see ``LAYOUTS``); ``grid`` ``(h, w)`` and ``prefix`` for tokens."""

    kind: str = "nchw"
    grid: tuple[int, int] | None = None
    prefix: int = 0

    def describe(self) -> str:
        """E.g. ``tokens [N, 1 + 14×14, C]`` or ``channels-last [N, h, w, C]``."""
        if self.kind == "tokens" and self.grid:
            return f"tokens [N, {self.prefix} + {self.grid[0]}×{self.grid[1]}, C]"
        return {"channels-last": "channels-last [N, h, w, C]"}.get(self.kind, "[N, C, h, w]")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **({"grid": list(self.grid), "prefix": self.prefix} if self.grid else {})}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Layout:
        grid = raw.get("grid")
        return cls(raw["kind"], tuple(grid) if grid else None, int(raw.get("prefix", 0)))


@dataclass(frozen=True)
class Metadata:
    """Everything the runtime needs to know about an explainer graph besides its tensors."""

    layers: tuple[str, ...]
    preprocess: Preprocess = field(default_factory=Preprocess)
    labels: tuple[str, ...] | None = None
    source: str = ""
    exporter: str = ""
    scores_kind: str = "logits"
    input_gradients: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    version: str = CONTRACT_VERSION
    layouts: dict[str, Layout] = field(default_factory=dict)  # non-NCHW layers only

    def to_props(self) -> dict[str, str]:
        """Serialise to ONNX ``metadata_props`` (string → string)."""
        props = {
            META_VERSION: self.version,
            META_LAYERS: json.dumps(list(self.layers)),
            META_PREPROCESS: self.preprocess.to_json(),
            META_SOURCE: self.source,
            META_EXPORTER: self.exporter,
            META_SCORES_KIND: self.scores_kind,
            META_INPUT_GRADIENTS: json.dumps(list(self.input_gradients)),
            META_HEADS: json.dumps(list(self.heads)),
        }
        if self.labels is not None:
            props[META_LABELS] = json.dumps(list(self.labels))
        if self.layouts:
            props[META_LAYOUTS] = json.dumps({k: v.to_dict() for k, v in self.layouts.items()})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> Metadata:
        """Parse ``metadata_props``; raises ``ValueError`` when the graph does not follow the contract."""
        if META_VERSION not in props:
            raise ValueError("not an onnxcam explainer graph (no onnxcam metadata); export it with `onnxcam export`")
        if props[META_VERSION] != CONTRACT_VERSION:
            raise ValueError(
                f"explainer graph has contract version {props[META_VERSION]}, this onnxcam reads {CONTRACT_VERSION}"
            )
        labels = props.get(META_LABELS)
        return cls(
            layers=tuple(json.loads(props[META_LAYERS])),
            preprocess=Preprocess.from_json(props[META_PREPROCESS]),
            labels=tuple(json.loads(labels)) if labels else None,
            source=props.get(META_SOURCE, ""),
            exporter=props.get(META_EXPORTER, ""),
            scores_kind=props.get(META_SCORES_KIND, "logits"),
            input_gradients=tuple(json.loads(props.get(META_INPUT_GRADIENTS, "[]"))),
            heads=tuple(json.loads(props.get(META_HEADS, "[]"))),
            version=props[META_VERSION],
            layouts={k: Layout.from_dict(v) for k, v in json.loads(props.get(META_LAYOUTS, "{}")).items()},
        )

    def layout(self, layer: str) -> Layout:
        """The original layout of ``layer`` (NCHW unless recorded otherwise)."""
        return self.layouts.get(layer, Layout())

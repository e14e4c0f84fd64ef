"""The explainer-graph contract: names of inputs, outputs and metadata keys.

The export stage writes graphs that follow this module; the runtime reads them through it.
Nothing here imports torch or onnx, so both sides can share it.

The explained quantity of image ``n`` is ``y_n = Σ seed_n ⊙ scores_n`` (METHODS.md, Targets): by default the seed is
the one-hot of the target class, so ``y_n`` is that class's logit.

Graph inputs
    ``input``   float32 ``[N, C, H, W]`` preprocessed images (N dynamic, or fixed: metadata ``onnxcam.fixed_batch``,
                :mod:`onnxcam.fixed_batch`), whatever the model itself takes: a uint8
                or NHWC model input is cast/transposed inside the graph (see :class:`Preprocess`).
    ``target``  int64 ``[N]``: class to explain per image, ``-1`` = that image's top-1 prediction.
    ``seed``    optional float32 ``[N, *S]`` shaped like ``scores`` (default: one all-zero row). A non-zero row
                replaces the one-hot of ``target`` for its image (class sets, a region of a dense output, a direction).
    ``head:<layer>``  optional float32 ``[M, C, h, w]``: a feature map fed to the part of the net after ``layer``.

Graph outputs
    ``scores``                the model's scores ``[N, K]`` (classifier) or ``[N, K, H', W']`` (dense output), or a
                              detector's flattened prediction tensor (metadata ``onnxcam.detection``): logits
                              unless the metadata ``onnxcam.scores_kind`` says ``sigmoid``, ``probabilities`` or
                              ``raw`` (:mod:`onnxcam.scores`; absent = ``logits``).
    ``target_used``           int64 ``[N]``: the class explained; ``-1`` where a seed row was used.
    ``activation:<layer>``    feature map ``A`` of each tapped layer, ``[N, C, h, w]``.
    ``gradient:<layer>``      ``∂ y_n / ∂ A`` per image, same shape as ``A``.
    ``gradient:input[:rule]`` optional ``∂ y_n / ∂ input`` with the ReLU backward ``rule`` (see ``RELU_RULES``).
    ``head_scores:<layer>``   optional: ``scores`` computed from ``head:<layer>`` (only the part after the layer runs).
    ``bias_gradient:*``       optional (``--bias-gradients``, FullGrad; metadata ``onnxcam.bias_gradients`` lists the
                              biased nodes): ``bias_gradient:input`` ``x ⊙ ∂y/∂x`` and ``bias_gradient:<i>``
                              ``b ⊙ ∂y/∂z`` per biased node, switched by ``compute:bias_gradients`` (default false).
    ``hvp:<layer>``           optional (``--hvp``, ShapleyCAM; metadata ``onnxcam.hvp`` lists the layers): ``H·A``,
                              the Hessian of ``y_n`` in ``A`` times ``A``, switched by ``compute:hvp`` (default false).

Detectors (metadata ``onnxcam.detection``) also have a backward with a box axis, computed from one forward pass:
inputs ``box_seed`` ``[M, *S]`` (one seed per box) and ``box_rows`` int64 ``[M]`` (the image of each box), output
``box_gradient:<layer>`` ``[M, C, h, w]``, switched by ``compute:box_gradients`` (default false). Optional (absent:
that backward reads the forward of ``input`` run in the same call): outputs ``box_state:<t>`` (switched by
``compute:box_state``) hold the forward tensors that backward reads, per image; fed back as inputs
``box_state_in:<t>`` with an empty ``input`` ``[0, C, H, W]``, the boxes are differentiated without running the
network again.

Switches: the gradients, input gradients and heads are computed only when their boolean input says so (onnxruntime
runs every node of a graph whatever outputs are requested, so each optional part sits in an ``If``):
``compute:gradients`` (default true) for all ``gradient:<layer>``, ``compute:<output>`` (default false) for each
``gradient:input[:rule]`` and ``head_scores:<layer>``. A part switched off yields an empty ``[0, …]`` tensor.

In-graph heat maps (optional, metadata ``onnxcam.in_graph`` lists the methods; absent = none): output
``cam:<method>`` float32 ``[N, H, W]`` in ``[0, 1]`` at the input's resolution, the final map of ``method`` (Grad-CAM
…) for ``target_used``, all layers fused, equal to the Python runtime's; switched by ``compute:cam:<method>``
(default true) *and* ``compute:gradients``. Feed ``input`` alone (and optionally ``target``/``seed``) to get it.
Unit targets (optional; metadata ``onnxcam.unit``, absent = none): a graph exported with a unit layer ``L`` also has
the output ``activation:L`` (the unit tensor ``U``, ``[N, C, h, w]`` or ``[N, K]``) and the input ``unit_seed``
float32 ``[N, *U]`` (default: one all-zero row). A non-zero row explains ``y_n = Σ unit_seed_n ⊙ U_n`` instead of the
class (``target_used`` −1): every ``gradient:*`` is then ``∂y_n/∂·`` of that unit (:mod:`onnxcam.units`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

CONTRACT_VERSION = "2"
#: Versions this module reads. 2 added (all optional, absent = version 1's meaning): the input description's channels,
#: dtype and layout (``onnxcam.preprocess``), real score kinds (``onnxcam.scores_kind``), layer layouts
#: (``onnxcam.layouts``) and detector outputs (``onnxcam.detection``); a version-1 file reads as before.
READABLE_VERSIONS = ("1", "2")

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
BOX_SEED = "box_seed"
BOX_ROWS = "box_rows"
BOX_GRADIENT_PREFIX = "box_gradient:"
BOX_SWITCH = SWITCH_PREFIX + "box_gradients"
CAM_PREFIX = "cam:"
UNIT_SEED = "unit_seed"
BIAS_GRADIENT_PREFIX = "bias_gradient:"
BIAS_SWITCH = SWITCH_PREFIX + "bias_gradients"
HVP_PREFIX = "hvp:"
HVP_SWITCH = SWITCH_PREFIX + "hvp"
BOX_STATE_PREFIX = "box_state:"
BOX_STATE_INPUT_PREFIX = "box_state_in:"
BOX_STATE_SWITCH = SWITCH_PREFIX + "box_state"
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
META_DETECTION = META_PREFIX + "detection"
META_LAYOUTS = META_PREFIX + "layouts"  # optional; absent = every layer NCHW
META_IN_GRAPH = META_PREFIX + "in_graph"  # optional JSON list of methods with a ``cam:<method>`` output; absent = none
META_UNIT = META_PREFIX + "unit"  # optional; absent = no unit targets
META_BIAS_GRADIENTS = META_PREFIX + "bias_gradients"  # optional; absent = no FullGrad outputs
META_HVP = META_PREFIX + "hvp"  # optional; absent = no Hessian-vector products
#: Optional: the graph runs on exactly this many images per run (a source file exported with a fixed batch whose
#: graph folds it into other shapes); the runtime feeds chunks of that size. Absent = any batch.
META_FIXED_BATCH = META_PREFIX + "fixed_batch"
#: Optional JSON ``[lo, hi]``: the scores are the dequantized output of an int8 ``QuantizeLinear``, so the deployed
#: scores are clipped to that range and a clipped score has gradient 0 (straight-through estimator). Absent = no
#: such clip.
META_SCORE_LIMITS = META_PREFIX + "score_limits"

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


def box_gradient_name(layer: str) -> str:
    """Graph output (detectors) holding ``∂ Σ(box_seed_m ⊙ scores_{box_rows[m]}) / ∂A`` per box row ``m``."""
    return BOX_GRADIENT_PREFIX + layer


def cam_name(method: str) -> str:
    """Graph output holding the final in-graph map of ``method`` (``cam:gradcam``, ``cam:gradcam++`` …)."""
    return CAM_PREFIX + method


def bias_gradient_name(index: str) -> str:
    """Graph output (``--bias-gradients``, FullGrad) ``bias_gradient:<i>``, ``b ⊙ ∂y/∂z`` of the ``i``-th biased
    node's output ``z``, or ``bias_gradient:input``, ``x ⊙ ∂y/∂x``; switched by ``compute:bias_gradients``."""
    return BIAS_GRADIENT_PREFIX + index


def hvp_name(layer: str) -> str:
    """Graph output (``--hvp``, ShapleyCAM) ``hvp:<layer>``: ``H·A = ∂⟨∂y/∂A, v⟩/∂A`` at ``v = A`` (``v`` held
    constant), switched by ``compute:hvp``."""
    return HVP_PREFIX + layer


def box_state_name(tensor: str) -> str:
    """Graph output (detectors) holding the forward ``tensor`` the box-axis backward reads."""
    return BOX_STATE_PREFIX + tensor


def box_state_input_name(tensor: str) -> str:
    """Graph input (detectors) taking :func:`box_state_name` ``(tensor)`` back, rows per image."""
    return BOX_STATE_INPUT_PREFIX + tensor


def switch_name(output: str) -> str:
    """Boolean graph input that turns the optional ``output`` on (``compute:gradient:input``, …)."""
    return SWITCH_PREFIX + output


def head_input_name(layer: str) -> str:
    """Graph input feeding a feature map of ``layer`` to the part of the network after it."""
    return HEAD_INPUT_PREFIX + layer


def head_scores_name(layer: str) -> str:
    """Graph output holding the scores computed from :func:`head_input_name` ``(layer)``."""
    return HEAD_SCORES_PREFIX + layer


#: Channel orders of a 3-channel input; a 1-channel input is ``grey``, other counts take arrays as given (``any``).
CHANNEL_ORDERS = ("RGB", "BGR")
#: What the model's own graph input takes: pixel dtypes and layouts (the explainer's ``input`` is float32 NCHW always).
INPUT_DTYPES = ("float32", "uint8")
INPUT_LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the ``input`` tensor: ``((resize(img) * scale) - mean) / std`` in ``channel_order``.

    ``input_size`` is ``(H, W)``; ``value_scale`` maps 0–255 pixels to the model's range (``1/255`` → ``[0, 1]``,
    ``1`` for models taking 0–255). ``mean``/``std`` hold one value per channel, or one value for all channels.
    ``channels``: C of the input (1: images are converted to grey, ``channel_order`` ``grey``; 3: RGB or BGR; other
    counts take arrays only). ``input_dtype`` and ``input_layout`` say what the *model's* own input takes: for
    ``uint8`` the runtime feeds the integer pixels 0–255 as float32 values and the explainer graph takes them so
    (the model's uint8 input retyped to float, so that gradients w.r.t. the input exist); for ``NHWC`` the explainer
    graph takes NCHW and transposes inside. Absent fields (files written before they existed) mean 3-channel float32
    NCHW.
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channel_order: str = "RGB"
    value_scale: float = 1.0 / 255.0
    resize: str = "bilinear"
    channels: int = 3
    input_dtype: str = "float32"
    input_layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.channels == 1 and self.channel_order == "RGB":
            object.__setattr__(self, "channel_order", "grey")
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Why these settings cannot describe an input (one line), or ``None``."""
        c = self.channels
        if not isinstance(c, int) or c < 1:
            return f"channels must be a positive integer, got {c!r}"
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, c):
                return f"{name} has {len(values)} values; the input has {c} channel(s): give {c} values or one for all"
        if any(s == 0 for s in self.std):
            return "std must not be 0"
        if self.channel_order not in (*CHANNEL_ORDERS, "grey"):
            return f"channel order {self.channel_order!r}: choose RGB or BGR"
        if self.channel_order == "BGR" and c != 3:
            return f"channel order BGR needs 3 channels, the input has {c}"
        if self.channel_order == "grey" and c != 1:
            return f"channel order grey needs 1 channel, the input has {c}"
        if self.input_dtype not in INPUT_DTYPES:
            return f"input dtype {self.input_dtype!r} is not supported (supported: {', '.join(INPUT_DTYPES)})"
        if self.input_layout not in INPUT_LAYOUTS:
            return f"input layout {self.input_layout!r}: choose {' or '.join(INPUT_LAYOUTS)}"
        if not self.value_scale > 0:
            return f"value scale must be positive, got {self.value_scale}"
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        raw: dict[str, Any] = json.loads(text)
        for key in ("input_size", "mean", "std"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    def per_channel(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """``mean`` or ``std`` with one value per channel (a single value broadcast to all ``channels``)."""
        return tuple(values) * self.channels if len(values) == 1 else tuple(values)


#: Dense detection layouts of ``scores`` (per image, before flattening): ``yolov8`` ``[4 + K, A]`` (box cx, cy, w, h
#: then K class scores per anchor, as YOLOv8/v11 export it), ``yolov5`` ``[A, 5 + K]`` (box, objectness, K class
#: scores per anchor, as YOLOv5/v7 export it).
DETECT_LAYOUTS = ("yolov8", "yolov5")


@dataclass(frozen=True)
class Detection:
    """A detector's raw (pre-NMS) prediction tensor: its ``layout`` (:data:`DETECT_LAYOUTS`) and per-image ``shape``.

    The graph's ``scores`` are that tensor flattened, ``[N, prod(shape)]``; seeds and targets index it flat.
    """

    layout: str
    shape: tuple[int, int]

    @property
    def classes(self) -> int:
        return self.shape[0] - 4 if self.layout == "yolov8" else self.shape[1] - 5

    @property
    def anchors(self) -> int:
        return self.shape[1] if self.layout == "yolov8" else self.shape[0]

    def to_json(self) -> str:
        return json.dumps({"layout": self.layout, "shape": list(self.shape)})

    @classmethod
    def from_json(cls, text: str) -> Detection:
        raw = json.loads(text)
        return cls(raw["layout"], tuple(raw["shape"]))


@dataclass(frozen=True)
class Layout:
    """The original layout of a tapped layer (see ``LAYOUTS``); ``grid`` ``(h, w)`` and ``prefix`` for tokens, and
    ``order`` for tokens the model keeps out of row-major order (Hiera's unrolled stages): the index (after the
    prefix) of the token at each cell of the grid, row-major."""

    kind: str = "nchw"
    grid: tuple[int, int] | None = None
    prefix: int = 0
    order: tuple[int, ...] | None = None

    def describe(self) -> str:
        """E.g. ``tokens [N, 1 + 14×14, C]`` or ``channels-last [N, h, w, C]``."""
        if self.kind == "tokens" and self.grid:
            reordered = " (in the model's own order)" if self.order else ""
            return f"tokens [N, {self.prefix} + {self.grid[0]}×{self.grid[1]}, C]{reordered}"
        return {"channels-last": "channels-last [N, h, w, C]"}.get(self.kind, "[N, C, h, w]")

    def to_dict(self) -> dict[str, Any]:
        grid = {"grid": list(self.grid), "prefix": self.prefix} if self.grid else {}
        return {"kind": self.kind, **grid, **({"order": list(self.order)} if self.order else {})}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Layout:
        grid, order = raw.get("grid"), raw.get("order")
        return cls(
            raw["kind"], tuple(grid) if grid else None, int(raw.get("prefix", 0)), tuple(order) if order else None
        )


@dataclass(frozen=True)
class Unit:
    """The tensor whose units can be explained (``unit_seed``): its ``layer`` and per-image ``shape`` ``(C, h, w)`` or
    ``(K,)``."""

    layer: str
    shape: tuple[int, ...]

    def to_json(self) -> str:
        return json.dumps({"layer": self.layer, "shape": list(self.shape)})

    @classmethod
    def from_json(cls, text: str) -> Unit:
        raw = json.loads(text)
        return cls(raw["layer"], tuple(int(d) for d in raw["shape"]))


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
    detection: Detection | None = None
    layouts: dict[str, Layout] = field(default_factory=dict)  # non-NCHW layers only
    in_graph: tuple[str, ...] = ()  # methods with a ``cam:<method>`` output
    unit: Unit | None = None
    bias_gradients: tuple[str, ...] = ()  # FullGrad: the biased nodes of ``bias_gradient:<i>``, in order
    hvp: tuple[str, ...] = ()  # ShapleyCAM: the layers with an ``hvp:<layer>`` output
    fixed_batch: int | None = None  # images per run when the graph takes exactly that many; ``None``: any batch
    score_limits: tuple[float, float] | None = None  # int8 scores: the quantization range they are clipped to

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
        if self.detection is not None:
            props[META_DETECTION] = self.detection.to_json()
        if self.layouts:
            props[META_LAYOUTS] = json.dumps({k: v.to_dict() for k, v in self.layouts.items()})
        if self.in_graph:
            props[META_IN_GRAPH] = json.dumps(list(self.in_graph))
        if self.unit is not None:
            props[META_UNIT] = self.unit.to_json()
        if self.bias_gradients:
            props[META_BIAS_GRADIENTS] = json.dumps(list(self.bias_gradients))
        if self.hvp:
            props[META_HVP] = json.dumps(list(self.hvp))
        if self.fixed_batch is not None:
            props[META_FIXED_BATCH] = str(self.fixed_batch)
        if self.score_limits is not None:
            props[META_SCORE_LIMITS] = json.dumps(list(self.score_limits))
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> Metadata:
        """Parse ``metadata_props``; raises ``ValueError`` when the graph does not follow the contract."""
        if META_VERSION not in props:
            raise ValueError("not an onnxcam explainer graph (no onnxcam metadata); export it with `onnxcam export`")
        if props[META_VERSION] not in READABLE_VERSIONS:
            raise ValueError(
                f"explainer graph has contract version {props[META_VERSION]}, this onnxcam reads "
                f"{', '.join(READABLE_VERSIONS)}: upgrade onnxcam or re-export the model"
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
            detection=Detection.from_json(props[META_DETECTION]) if META_DETECTION in props else None,
            layouts={k: Layout.from_dict(v) for k, v in json.loads(props.get(META_LAYOUTS, "{}")).items()},
            in_graph=tuple(json.loads(props.get(META_IN_GRAPH, "[]"))),
            unit=Unit.from_json(props[META_UNIT]) if META_UNIT in props else None,
            bias_gradients=tuple(json.loads(props.get(META_BIAS_GRADIENTS, "[]"))),
            hvp=tuple(json.loads(props.get(META_HVP, "[]"))),
            fixed_batch=int(props[META_FIXED_BATCH]) if META_FIXED_BATCH in props else None,
            score_limits=tuple(json.loads(props[META_SCORE_LIMITS])) if META_SCORE_LIMITS in props else None,
        )

    def layout(self, layer: str) -> Layout:
        """The original layout of ``layer`` (NCHW unless recorded otherwise)."""
        return self.layouts.get(layer, Layout())

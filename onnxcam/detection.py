"""Per-box explanations of a detector: decode its raw output, keep boxes by confidence and NMS, seed each box.

The explainer graph of a detector (metadata ``onnxcam.detection``, :class:`onnxcam.contract.Detection`) exposes the
raw prediction tensor flattened as ``scores`` ``[N, D·A]``. Box ``b`` of class ``c`` at anchor ``a`` is explained
through the contract's seed, ``y = Σ seed ⊙ scores``:

* ``yolov8`` ``[4 + K, A]``: ``seed[4 + c, a] = 1``, so ``y`` is the class score ``s_{c,a}``;
* ``yolov5`` ``[A, 5 + K]``: the confidence is ``obj_a · cls_{c,a}``; ``seed[a, 5 + c] = obj_a``, ``seed[a, 4] =
  cls_{c,a}`` gives ``∂y/∂A = ∂(obj_a · cls_{c,a})/∂A`` exactly (product rule at the current point), so every
  gradient CAM explains the box's confidence (``y`` itself is twice the confidence).

With ``match_iou = t`` the seed covers every anchor whose decoded box overlaps the kept box by IoU ≥ t with class
``c`` scored there, summed — the dense-output counterpart of pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``.
Decoding follows the Ultralytics convention: boxes ``(cx, cy, w, h)`` in network-input pixels; confidence
threshold, then class-aware NMS with OpenCV's ``cv2.dnn.NMSBoxesBatched``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from . import contract
from .contract import Detection
from .methods import CamMethod, get_method
from .postprocess import blank_map_warning, fuse, layer_map

if TYPE_CHECKING:
    from .explainer import Explainer, ImageLike


@dataclass(frozen=True)
class Box:
    """One kept detection: ``xyxy`` in network-input pixels, its class, label, confidence and anchor index."""

    xyxy: tuple[float, float, float, float]
    class_index: int
    label: str | None
    score: float
    anchor: int

    def scaled(self, sx: float, sy: float) -> tuple[float, float, float, float]:
        """``xyxy`` multiplied by ``(sx, sy, sx, sy)`` (network input → image pixels)."""
        x0, y0, x1, y1 = self.xyxy
        return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


@dataclass
class Detections:
    """One image's boxes and their maps: ``maps[method]`` ``[B, H, W]`` in ``[0, 1]`` at network resolution, one per
    box (same order as ``boxes``); ``eigencam`` ``[H, W]`` per image (gradient-free); ``image_size`` ``(h, w)``;
    ``warnings``: one line per method whose map is 0 everywhere for some boxes (:func:`blank_box_warnings`)."""

    boxes: list[Box]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    eigencam: np.ndarray | None = None
    image_size: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)


def split(scores: np.ndarray, detection: Detection) -> tuple[np.ndarray, np.ndarray]:
    """Flat scores ``[N, D·A]`` → boxes ``(cx, cy, w, h)`` ``[N, A, 4]`` and confidences ``[N, A, K]``
    (``yolov5``: objectness × class score)."""
    per_anchor = scores.reshape(len(scores), *detection.shape)
    if detection.layout == "yolov8":
        per_anchor = per_anchor.transpose(0, 2, 1)
        return per_anchor[..., :4], per_anchor[..., 4:]
    return per_anchor[..., :4], per_anchor[..., 5:] * per_anchor[..., 4:5]


def to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    """``(cx, cy, w, h)`` ``[..., 4]`` → ``(x0, y0, x1, y1)``."""
    centre, half = cxcywh[..., :2], cxcywh[..., 2:] / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``xyxy`` box with ``boxes`` ``[M, 4]`` → ``[M]``."""
    lo = np.maximum(box[:2], boxes[:, :2])
    hi = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(np.clip(box[2:] - box[:2], 0, None))
    areas = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def detect(
    scores: np.ndarray,
    detection: Detection,
    confidence: float = 0.25,
    nms_iou: float = 0.45,
    max_boxes: int = 100,
    labels: Sequence[str] | None = None,
) -> list[Box]:
    """Boxes of one image's flat scores ``[D·A]``: best class per anchor, confidence ≥ ``confidence``, class-aware
    NMS at IoU ``nms_iou`` (``cv2.dnn.NMSBoxesBatched``), at most ``max_boxes``, by decreasing confidence."""
    cxcywh, conf = split(scores[None], detection)
    cxcywh, conf = cxcywh[0], conf[0]
    classes = conf.argmax(axis=1)
    best = conf[np.arange(len(conf)), classes]
    anchors = np.flatnonzero(best >= confidence)
    if not len(anchors):
        return []
    xyxy = to_xyxy(cxcywh[anchors])
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        best[anchors].astype(np.float64).tolist(),
        classes[anchors].astype(np.int32).tolist(),
        float(confidence),
        float(nms_iou),
        top_k=max_boxes,
    )
    kept = sorted(np.asarray(kept, np.int64).reshape(-1).tolist(), key=lambda i: -best[anchors[i]])[:max_boxes]
    return [
        Box(
            xyxy=tuple(float(v) for v in xyxy[i]),
            class_index=int(classes[anchors[i]]),
            label=labels[classes[anchors[i]]] if labels and classes[anchors[i]] < len(labels) else None,
            score=float(best[anchors[i]]),
            anchor=int(anchors[i]),
        )
        for i in kept
    ]


def matched_anchors(scores: np.ndarray, detection: Detection, box: Box, match_iou: float | None) -> np.ndarray:
    """The anchors a box's seed covers: its own, or (``match_iou``) every anchor whose decoded box overlaps it by
    IoU ≥ ``match_iou`` (the box's own anchor always included)."""
    if match_iou is None:
        return np.array([box.anchor])
    cxcywh, _ = split(scores[None], detection)
    overlaps = iou(np.asarray(box.xyxy), to_xyxy(cxcywh[0]))
    return np.union1d(np.flatnonzero(overlaps >= match_iou), [box.anchor])


def box_seed(scores: np.ndarray, detection: Detection, box: Box, match_iou: float | None = None) -> np.ndarray:
    """Seed ``[D·A]`` over one image's flat scores ``[D·A]`` whose ``Σ seed ⊙ scores`` has the gradient of the box's
    confidence (summed over :func:`matched_anchors`); see the module docstring for each layout."""
    anchors = matched_anchors(scores, detection, box, match_iou)
    c = box.class_index
    seed = np.zeros(detection.shape, np.float32)
    if detection.layout == "yolov8":
        seed[4 + c, anchors] = 1.0
    else:
        per_anchor = scores.reshape(detection.shape)
        seed[anchors, 5 + c] = per_anchor[anchors, 4]
        seed[anchors, 4] = per_anchor[anchors, 5 + c]
    return seed.reshape(-1)


def class_scores_seed(detection: Detection) -> np.ndarray:
    """Seed ``[D·A]`` of the sum of every class score at every anchor (the image-level quantity of EigenCAM runs)."""
    seed = np.zeros(detection.shape, np.float32)
    if detection.layout == "yolov8":
        seed[4:] = 1.0
    else:
        seed[:, 5:] = 1.0
    return seed.reshape(-1)


def explain_detections(
    explainer: Explainer,
    images: ImageLike | Sequence[ImageLike],
    methods: Sequence[str] = ("gradcam",),
    confidence: float = 0.25,
    nms_iou: float = 0.45,
    max_boxes: int = 100,
    match_iou: float | None = None,
    eigencam: bool = True,
    layers: Sequence[str] | None = None,
    eigen_smooth: bool = False,
    one_forward: bool | None = None,
    drise_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> list[Detections]:
    """Detect boxes in each image, then one map per box and method and, with ``eigencam``, one EigenCAM map per image.

    ``one_forward``: differentiate all boxes of an image from one forward pass (the graph's box-axis backward,
    ``box_gradient:<layer>``; gradient CAMs only); ``False``: one seeded row per box, the image's forward repeated per
    box (any method, ``kwargs`` as :meth:`~onnxcam.explainer.Explainer.explain_arrays`); ``None``: the first when the
    graph has it and the methods allow it. Boxes per run: at most ``explainer.max_batch`` (one image at least).
    The method ``drise`` (:mod:`onnxcam.detection_rise`, masked forwards only) takes ``drise_options`` (``masks``,
    ``cells``, ``keep``, ``random_seed``, ``batch_size``); its maps are min-max normalised per box.
    """
    detection = explainer.metadata.detection
    if detection is None:
        raise ValueError("this explainer graph is not a detector's; export it with --task detect")
    chosen = [get_method(m) for m in methods if m != "drise"]
    layers = list(layers or explainer.layers)
    usable = contract.BOX_SEED in explainer._optional and not kwargs
    usable = usable and all(isinstance(m, CamMethod) and not m.needs_head_weights for m in chosen)
    if one_forward and not usable:
        fixed = explainer.metadata.fixed_batch
        raise ValueError(
            f"one_forward: this graph runs a fixed batch of {fixed} image(s) (the source file's) and has no box axis: "
            "each box repeats the forward (one_forward=None or False)"
            if fixed is not None
            else "one_forward needs a graph exported with this onnxcam and gradient CAM methods only"
        )
    one = usable if one_forward is None else one_forward
    decoded, x = explainer._decode(images)
    scores, *forward = forward_pass(explainer, x, layers) if one else (explainer.scores(x),)
    found = [detect(s, detection, confidence, nms_iou, max_boxes, explainer.labels) for s in scores]
    seeds = [
        np.stack([box_seed(scores[n], detection, b, match_iou) for b in boxes])
        if boxes
        else np.zeros((0, scores.shape[1]), np.float32)  # an image without boxes
        for n, boxes in enumerate(found)
    ]
    if forward:
        maps, eigen = _one_forward(explainer, x, seeds, chosen, layers, eigen_smooth, eigencam, *forward)
    else:
        maps, eigen = _per_box(explainer, x, seeds, chosen, layers, eigen_smooth, eigencam, **kwargs)
    if "drise" in methods:
        from .detection_rise import drise

        for n, boxes in enumerate(found):
            raw = drise(explainer.scores, x[n], scores[n], detection, boxes, **(drise_options or {}))
            low, high = raw.min((1, 2), keepdims=True), raw.max((1, 2), keepdims=True)
            maps[n]["drise"] = ((raw - low) / np.maximum(high - low, 1e-12)).astype(np.float32)
    return [
        Detections(boxes, maps[n], eigen[n] if eigencam else None, image.shape[:2], blank_box_warnings(boxes, maps[n]))
        for n, (boxes, image) in enumerate(zip(found, decoded, strict=True))
    ]


def blank_box_warnings(boxes: Sequence[Box], maps: dict[str, np.ndarray]) -> list[str]:
    """One line per method whose map ``maps[method][k]`` ``[H, W]`` is 0 everywhere for some boxes ``k``
    (0-based, ``boxes``' order): ``boxes 16–79 (64 of 80): METHOD: the map is 0 everywhere …``."""
    lines = []
    for method, values in maps.items():
        blank = [k for k in range(len(boxes)) if values[k].size and float(values[k].max()) == 0.0]
        if blank:
            runs = np.split(np.array(blank), np.flatnonzero(np.diff(blank) != 1) + 1)
            ranges = ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)
            lines.append(
                f"box{'es' * (len(blank) > 1)} {ranges} ({len(blank)} of {len(boxes)}): "
                + blank_map_warning(method, "their scores", "a box from a scale the layer does not feed")
            )
    return lines


Maps = list[dict[str, np.ndarray]]


def _per_box(
    explainer: Explainer,
    x: np.ndarray,
    seeds: list[np.ndarray],
    methods: list[CamMethod | Any],
    layers: list[str],
    eigen_smooth: bool,
    eigencam: bool,
    **kwargs: Any,
) -> tuple[Maps, list[np.ndarray | None]]:
    """One seeded row per box (the forward repeated per box) through :meth:`Explainer.explain_arrays`."""
    rows = np.repeat(np.arange(len(x)), [len(s) for s in seeds])
    names = [m.name for m in methods]
    options = {"layers": layers, "eigen_smooth": eigen_smooth, **kwargs}
    flat = explainer.explain_arrays(x[rows], methods=names, seed=np.concatenate(seeds), **options) if len(rows) else []
    every_class = class_scores_seed(explainer.metadata.detection)  # EigenCAM reads no gradient
    eigen = explainer.explain_arrays(x, methods=("eigencam",), seed=every_class, **options) if eigencam else []
    maps, start = [], 0
    for s in seeds:
        mine = flat[start : start + len(s)]
        start += len(s)
        maps.append({m: np.stack([r.maps[m] for r in mine]) if mine else np.zeros((0, *x.shape[2:])) for m in names})
    return maps, [e.maps["eigencam"] for e in eigen] or [None] * len(x)


def forward_pass(
    explainer: Explainer, x: np.ndarray, layers: Sequence[str]
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The forward pass that finds the boxes, in chunks of ``max_batch`` images: ``scores`` ``[N, D·A]``, the
    activations of ``layers`` and the box-axis backward's state (``box_state:<t>`` by ``t``; empty for a graph
    without it)."""
    state = [o.name for o in explainer.graph.session.get_outputs() if o.name.startswith(contract.BOX_STATE_PREFIX)]
    names = [contract.SCORES, *map(contract.activation_name, layers), *state]
    on = (contract.BOX_STATE_SWITCH,)
    parts = [
        explainer.graph.session.run(names, explainer._feeds(x[i : i + explainer.max_batch], compute=on))
        for i in range(0, len(x), explainer.max_batch)
    ]
    values = [np.concatenate(v) for v in zip(*parts, strict=True)]
    acts = dict(zip(layers, values[1 : 1 + len(layers)], strict=True))
    saved = dict(
        zip((s.removeprefix(contract.BOX_STATE_PREFIX) for s in state), values[1 + len(layers) :], strict=True)
    )
    return values[0], acts, saved


def box_gradients(
    explainer: Explainer,
    x: np.ndarray,
    state: dict[str, np.ndarray],
    seeds: np.ndarray,
    rows: np.ndarray,
    layers: Sequence[str],
) -> dict[str, np.ndarray]:
    """``∂ Σ(seeds_m ⊙ scores_{rows[m]}) / ∂A`` ``[M, C, h, w]`` per layer, in one run of the box-axis backward.

    ``x`` ``[N, C, H, W]`` and ``state`` (:func:`forward_pass`, the same images' rows): with a state the run feeds it
    and an empty ``input``, so the network before the layers does not run again; without (older graphs) the run
    repeats the forward of ``x``. ``seeds`` ``[M, D·A]``, ``rows`` int ``[M]`` (``M ≥ 1``) index ``x``.
    """
    images = np.zeros((0, *x.shape[1:]), np.float32) if state else x
    feeds = explainer._feeds(images, compute=(contract.BOX_SWITCH,))
    feeds |= {contract.box_state_input_name(t): v for t, v in state.items()}
    feeds[contract.BOX_SEED] = np.ascontiguousarray(seeds, np.float32)
    feeds[contract.BOX_ROWS] = np.asarray(rows, np.int64)
    names = [contract.box_gradient_name(la) for la in layers]
    return dict(zip(layers, explainer.graph.session.run(names, feeds), strict=True))


def _one_forward(
    explainer: Explainer,
    x: np.ndarray,
    seeds: list[np.ndarray],
    methods: list[CamMethod],
    layers: list[str],
    eigen_smooth: bool,
    eigencam: bool,
    activations: dict[str, np.ndarray],
    state: dict[str, np.ndarray],
) -> tuple[Maps, list[np.ndarray | None]]:
    """All boxes of a group of images from the forward pass that found them: ``box_gradient:<layer>`` for the box
    rows (the graph's state fed back, ``input`` empty: the network before the layers does not run again; a graph
    without state reruns the group's forward), the CAMs from the activations of each box's image; EigenCAM from the
    same activations. Groups hold at most ``max_batch`` boxes (one image at least)."""
    size = (x.shape[3], x.shape[2])
    eigen_method = get_method("eigencam")
    maps: Maps = []
    eigen: list[np.ndarray | None] = []
    for group in _groups([len(s) for s in seeds], explainer.max_batch):
        rows = np.repeat(np.arange(len(group)), [len(seeds[n]) for n in group]).astype(np.int64)
        mine = {t: v[group] for t, v in state.items()}
        if len(rows) and methods:
            grads = box_gradients(explainer, x[group], mine, np.concatenate([seeds[n] for n in group]), rows, layers)
        acts = {la: activations[la][group] for la in layers}
        per_method = {
            m.name: fuse([layer_map(m(acts[la][rows], grads[la], eigen_smooth=eigen_smooth), size) for la in layers])
            if len(rows)
            else np.zeros((0, size[1], size[0]), np.float32)
            for m in methods
        }
        whole = (
            fuse([layer_map(eigen_method(acts[la], eigen_smooth=eigen_smooth), size) for la in layers])
            if eigencam
            else None
        )
        bounds = np.cumsum([0, *(len(seeds[n]) for n in group)])
        for i in range(len(group)):
            maps.append({name: m[bounds[i] : bounds[i + 1]] for name, m in per_method.items()})
            eigen.append(whole[i] if whole is not None else None)
    return maps, eigen


def _groups(counts: list[int], limit: int) -> list[list[int]]:
    """Consecutive image indices grouped so that each group's box count is at most ``limit`` (one image at least)."""
    groups: list[list[int]] = []
    total = limit + 1
    for n, count in enumerate(counts):
        if not groups or total + count > limit:
            groups.append([])
            total = 0
        groups[-1].append(n)
        total += count
    return groups

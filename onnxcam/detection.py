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

from .contract import Detection
from .methods import get_method

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
    box (same order as ``boxes``); ``eigencam`` ``[H, W]`` per image (gradient-free); ``image_size`` ``(h, w)``."""

    boxes: list[Box]
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    eigencam: np.ndarray | None = None
    image_size: tuple[int, int] | None = None


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
    **kwargs: Any,
) -> list[Detections]:
    """Detect boxes in each image, then one gradient map per box and method (a batch of seeded runs: the image's
    forward is repeated per box) and, with ``eigencam``, one EigenCAM map per image. ``kwargs`` as
    :meth:`~onnxcam.explainer.Explainer.explain_arrays` (``layers``, ``options`` …)."""
    detection = explainer.metadata.detection
    names = [get_method(m).name for m in methods]
    if detection is None:
        raise ValueError("this explainer graph is not a detector's; export it with --task detect")
    decoded, x = explainer._decode(images)
    scores = explainer.scores(x)
    found = [detect(s, detection, confidence, nms_iou, max_boxes, explainer.labels) for s in scores]
    rows = np.repeat(np.arange(len(x)), [len(b) for b in found]).astype(np.int64)
    seeds = [box_seed(scores[n], detection, b, match_iou) for n, boxes in enumerate(found) for b in boxes]
    per_box = explainer.explain_arrays(x[rows], methods=methods, seed=np.stack(seeds), **kwargs) if seeds else []
    every_class = class_scores_seed(detection)  # EigenCAM reads no gradient; the seed only names the explained score
    eigen = (
        explainer.explain_arrays(x, methods=("eigencam",), seed=every_class, **kwargs) if eigencam and len(x) else []
    )
    results, start = [], 0
    for n, (boxes, image) in enumerate(zip(found, decoded, strict=True)):
        mine = per_box[start : start + len(boxes)]
        start += len(boxes)
        maps = {m: np.stack([r.maps[m] for r in mine]) if mine else np.zeros((0, *x.shape[2:])) for m in names}
        results.append(Detections(boxes, maps, eigen[n].maps["eigencam"] if eigen else None, image.shape[:2]))
    return results

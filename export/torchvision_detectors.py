"""torchvision's one-stage detectors (RetinaNet, FCOS, SSD/SSDlite) as a dense prediction tensor, before NMS.

A torchvision detector returns post-processed boxes (score threshold, top-k, NMS): no per-anchor gradient reaches
them. :func:`dense_detector` wraps the model so that it returns its raw predictions for every anchor in the
``yolov8`` layout (:data:`onnxcam.contract.DETECT_LAYOUTS`), ``[N, 4 + K, A]``: the anchors' boxes decoded by the
model's own box coder (``cx, cy, w, h`` in input pixels, clipped to the image as torchvision's post-processing does)
and, per class, the score torchvision's ``postprocess_detections`` thresholds:

* RetinaNet: ``σ(cls_logit)``;
* FCOS: ``√(σ(cls_logit) · σ(centerness))``;
* SSD / SSDlite: ``softmax(cls_logits)`` without the background column (class ``k`` here is torchvision's label
  ``k + 1``).

The input is the image in ``[0, 1]`` at a fixed ``H × W`` (the wrapper normalises with the model's
``image_mean``/``image_std`` and skips its resize: export with ``--input-size H W`` and a 0–1 value scale); the
anchors for that size are computed once (the model's anchor generator) and stored; they are broadcast over the batch,
never copied per image (a batch-sized copy made from the input's shape would not be gathered per box by
:mod:`.box_gradients`). Every kept box is then explained
by its class score at its anchor, as for any ``yolov8`` output (:mod:`onnxcam.detection`).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_convert, clip_boxes_to_image

KINDS = {RetinaNet: "retinanet", FCOS: "fcos", SSD: "ssd"}


class DenseDetector(nn.Module):
    """``model`` (a torchvision RetinaNet, FCOS or SSD) → ``[N, 4 + K, A]`` at input size ``(H, W)``; see the module
    docstring. ``self.model`` is the wrapped detector (its modules keep their names under ``model.``)."""

    def __init__(self, model: nn.Module, input_size: tuple[int, int]) -> None:
        super().__init__()
        kind = next((name for cls, name in KINDS.items() if isinstance(model, cls)), None)
        if kind is None:
            raise TypeError(
                f"{type(model).__name__}: dense_detector wraps torchvision's RetinaNet, FCOS or SSD (one-stage "
                "detectors); export another model's raw prediction tensor directly"
            )
        self.kind, self.model, self.input_size = kind, model.eval(), tuple(input_size)
        transform = model.transform
        self.register_buffer("mean", torch.tensor(transform.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(transform.image_std).view(1, -1, 1, 1))
        with torch.no_grad():
            x = torch.zeros(1, 3, *self.input_size)
            features = self._features(x)
            (anchors,) = model.anchor_generator(ImageList(x, [self.input_size]), features)
        self.register_buffer("anchors", anchors)  # [A, 4] xyxy

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.model.backbone((x - self.mean) / self.std)
        return [features] if isinstance(features, torch.Tensor) else list(features.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.model.head(self._features(x))
        codes = head["bbox_regression"]  # [N, A, 4]
        if self.kind == "fcos":  # its coder broadcasts the anchors [A, 4] (no batch-sized copy: see box_gradients)
            boxes = self.model.box_coder.decode(codes, self.anchors)
            scores = torch.sqrt(torch.sigmoid(head["cls_logits"]) * torch.sigmoid(head["bbox_ctrness"]))
        else:
            boxes = _decode(self.model.box_coder, codes, self.anchors)
            logits = head["cls_logits"]
            scores = torch.sigmoid(logits) if self.kind == "retinanet" else torch.softmax(logits, -1)[..., 1:]
        boxes = box_convert(clip_boxes_to_image(boxes, self.input_size), "xyxy", "cxcywh")
        return torch.cat([boxes, scores], -1).transpose(1, 2)


def _decode(coder: BoxCoder, codes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``BoxCoder.decode_single`` with a batch axis: codes ``[N, A, 4]`` on anchors ``[A, 4]`` (broadcast, so that
    no batch-sized copy of the anchors is made) → ``xyxy`` ``[N, A, 4]``; same formulas, weights and clip."""
    wx, wy, ww, wh = coder.weights
    size = anchors[:, 2:] - anchors[:, :2]
    centre = anchors[:, :2] + 0.5 * size
    shift = codes[..., :2] / codes.new_tensor([wx, wy])
    scale = torch.clamp(codes[..., 2:] / codes.new_tensor([ww, wh]), max=coder.bbox_xform_clip)
    centre, half = shift * size + centre, 0.5 * torch.exp(scale) * size
    return torch.cat([centre - half, centre + half], -1)


def dense_detector(model: nn.Module, input_size: tuple[int, int]) -> DenseDetector:
    """:class:`DenseDetector` of a torchvision RetinaNet, FCOS or SSD/SSDlite at ``input_size`` ``(H, W)``; raises
    ``TypeError`` (one line) for any other model."""
    return DenseDetector(model, input_size)

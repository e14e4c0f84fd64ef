"""Recipe: MTCNN's pretrained P-Net (face detection, MIT) as a dense one-stage detector over an image pyramid.

The weights ship inside the PyPI wheel ``facenet-pytorch`` (``pip install --no-deps facenet-pytorch``; nothing is
fetched from a model hub). P-Net is MTCNN's first stage (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", 2016): a fully convolutional net whose every output cell scores a
12×12 window at stride 2 (face / no face, softmax) and regresses its box. MTCNN runs it over an image pyramid and
refines the survivors with R-Net and O-Net; this recipe keeps the first stage only, in one graph::

    onnxcam export models/mtcnn_pnet.py:build --output models/mtcnn_pnet.onnx

The graph follows facenet-pytorch's ``detect_face`` first stage: pyramid scales ``m · 0.709^k`` with
``m = 12 / min_face`` while the short side stays ≥ 12 pixels, each level resized (bilinear, antialiased) and run
through P-Net; each cell's 12×12 window, in input pixels, moved by the regression offsets × the window's size
(``generateBoundingBox`` and ``bbreg``). The output is ``[N, 4 + 1, A]`` (YOLOv8 layout: box ``cx, cy, w, h`` in
input pixels, then the face probability), every level's cells concatenated: the runtime's threshold and NMS replace
MTCNN's. One change: each level (its size rounded up to even) is zero-padded by 5 pixels (grey, after the
normalisation), so that its ``L / 2`` cells tile it evenly — cell ``i``'s window ``[2i − 5, 2i + 7)``, centred on
``(i + ½) · 2`` — and a level's feature map resized to the input (as every CAM is drawn) lies on the windows its
cells see; unpadded, the cells of a coarse level cover only its middle (a 9×9 map over 28 pixels) and its map would be
drawn stretched away from the windows. The padding adds the border windows; the inner cells are MTCNN's.

Each level has a P-Net module of its own (``levels.k``, the same pretrained weights), so each level's last feature
map is a layer of its own: ``levels.k.prelu3`` (32 channels at stride 2 of the level), read by the face conv and the
box conv. Those are the detector's default layers (the forks of the head, one per scale), fused: a box's score
depends on its own level only, so its fused map is its level's Grad-CAM.

Preprocessing: RGB, ``(pixel − 127.5) / 128`` (mean 0.5, std 0.502 on [0, 1]), applied before the pyramid.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

#: MTCNN's pyramid factor; the smallest face, in input pixels (facenet-pytorch's default 20 adds two finer levels)
FACTOR = 0.709
MIN_FACE = 40
INPUT_SIZE = (512, 512)
#: P-Net: one cell per 12×12 window, at stride 2; the padding that centres cell ``i``'s window on ``2i + 1``
WINDOW, STRIDE, PAD = 12, 2, 5


def pyramid(size: tuple[int, int], min_face: float = MIN_FACE, factor: float = FACTOR) -> list[tuple[int, int]]:
    """Each level's ``(h, w)``, as facenet-pytorch's ``detect_face``: scale ``m = 12 / min_face`` times ``factor^k``
    while ``min(size) · scale ≥ 12``; a level's side is ``int(side · scale + 1)``, rounded up to even."""
    scale, levels = WINDOW / min_face, []
    while min(size) * scale >= WINDOW:
        levels.append(tuple(2 * -(-int(side * scale + 1) // 2) for side in size))
        scale *= factor
    return levels


class DensePNet(nn.Module):
    """P-Net over an image pyramid: ``[N, 3, H, W]`` normalised RGB → ``[N, 5, A]`` (``cx, cy, w, h``, face
    probability) for every cell of every level."""

    def __init__(self, pnet: nn.Module, size: tuple[int, int], min_face: float = MIN_FACE) -> None:
        super().__init__()
        self.size = size
        self.shapes = pyramid(size, min_face)
        self.levels = nn.ModuleList(copy.deepcopy(pnet) for _ in self.shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._level(x, net, self.shapes[k]) for k, net in enumerate(self.levels)], dim=2)

    def _level(self, x: torch.Tensor, net: nn.Module, shape: tuple[int, int]) -> torch.Tensor:
        """One level's cells ``[N, 5, h·w]``: the window of each cell in input pixels, moved by its regression."""
        level = F.interpolate(x, size=shape, mode="bilinear", align_corners=False, antialias=True)
        reg, prob = net(F.pad(level, (PAD,) * 4))
        h, w = prob.shape[2:]
        sy, sx = shape[0] / self.size[0], shape[1] / self.size[1]
        rows = (torch.arange(h, dtype=x.dtype).view(h, 1) * STRIDE - PAD) / sy
        cols = (torch.arange(w, dtype=x.dtype).view(1, w) * STRIDE - PAD) / sx
        wy, wx = WINDOW / sy, WINDOW / sx
        x0, y0 = cols + reg[:, 0] * wx, rows + reg[:, 1] * wy
        x1, y1 = cols + wx + reg[:, 2] * wx, rows + wy + reg[:, 3] * wy
        box = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, prob[:, 1]], dim=1)
        return box.flatten(2)


INFO = {
    "input_size": INPUT_SIZE,
    "mean": (0.5,) * 3,
    "std": (128.0 / 255.0,) * 3,
    "labels": ["face"],
}


def build() -> nn.Module:
    """The dense P-Net detector with facenet-pytorch's pretrained weights, at :data:`INPUT_SIZE`, in eval mode."""
    from facenet_pytorch.models.mtcnn import PNet

    model = DensePNet(PNet(pretrained=True).eval(), INPUT_SIZE).eval()
    model.onnxcam_export_info = dict(INFO)
    return model

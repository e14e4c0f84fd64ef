"""A dense-output model explained for one class over a pixel region, through the ``seed`` input.

torchvision's FCN-ResNet50 (random init; its logits are upsampled to the input size by a bilinear ``Resize``) vs
pytorch-grad-cam's ``GradCAM`` with ``SemanticSegmentationTarget`` — the recipe of its segmentation tutorial.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from onnxcam_export.api import export_model
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
from small_models import SegmentationOut

from onnxcam.explainer import Explainer

SIZE = 96
CLASSES = 21
TOLERANCE = 1e-4  # max |difference| of [0, 1] maps, as the classifier parity tests


@pytest.mark.slow
def test_region_of_a_class_matches_pytorch_grad_cam(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fcn = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, aux_loss=False, num_classes=CLASSES
    )
    model = SegmentationOut(fcn).eval()
    layer = "model.backbone.layer4"
    path = tmp_path / "fcn.onnx"
    _, report = export_model(
        model, path, [layer], (SIZE, SIZE), exporter="torchscript", input_gradients=(), log=lambda _: None
    )
    assert report is not None and report.typical < 1e-6
    explainer = Explainer(path, provider="cpu")
    assert explainer.score_shape == (CLASSES, SIZE, SIZE)

    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        predicted = model(torch.tensor(x)).argmax(1).numpy()
    targets, seeds = [], np.zeros((2, CLASSES, SIZE, SIZE), np.float32)
    for n in range(2):
        category = int(np.bincount(predicted[n].ravel()).argmax())  # the class covering most pixels
        mask = (predicted[n] == category).astype(np.float32)
        mask[: SIZE // 2] = 0.0  # only the lower half of its region
        targets.append(SemanticSegmentationTarget(category, mask))
        seeds[n, category] = mask
        assert 0 < mask.sum() < SIZE * SIZE

    with GradCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
        reference = cam(input_tensor=torch.tensor(x), targets=targets)
    ours = explainer.explain_arrays(x, seed=seeds, methods=["gradcam"])
    for n, result in enumerate(ours):
        assert result.class_index == -1
        assert np.abs(result.maps["gradcam"] - reference[n]).max() < TOLERANCE
        assert reference[n].max() > 0.5, "a non-trivial map, so the comparison can fail"

"""The face-detector demo (``models/mtcnn_pnet.py``): MTCNN's pretrained P-Net over an image pyramid, exported as a
dense detector, on a real photo. Skipped without ``facenet-pytorch`` (it ships the weights; never a dependency).

References independent of the code under test: the astronaut photo's face region (read off the photo), and
pytorch-grad-cam's ``GradCAM`` over the same layers (every pyramid level's ``prelu3``) with the box's face probability
at its anchor as the scalar target, on the PyTorch wrapper. Tolerance: maps ≤ 1e-4 absolute.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model
from skimage import data

from onnxcam.explainer import Explainer

pytest.importorskip("facenet_pytorch")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SIZE = (256, 256)  # the demo's graph is 512×512; half keeps the export short, the pyramid has 6 levels
FACE = (80, 30, 140, 95)  # the astronaut's face (x0, y0, x1, y1) at 256×256
TOLERANCE = 1e-4


def _recipe():
    spec = importlib.util.spec_from_file_location("mtcnn_pnet", ROOT / "models" / "mtcnn_pnet.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Explainer]:
    from facenet_pytorch.models.mtcnn import PNet

    recipe = _recipe()
    model = recipe.DensePNet(PNet(pretrained=True).eval(), SIZE).eval()
    path = tmp_path_factory.mktemp("pnet") / "pnet.onnx"
    info = recipe.INFO
    _, report = export_model(
        model, path, None, SIZE, labels=info["labels"], mean=info["mean"], std=info["std"], heads=False,
        log=lambda _: None,
    )  # fmt: skip
    assert report is not None and report.worst <= 1e-4
    return model, Explainer(path, provider="cpu")


def test_default_layers_are_every_levels_last_map(exported) -> None:
    model, explainer = exported
    assert explainer.metadata.detection.layout == "yolov8"
    assert explainer.layers == tuple(f"levels.{k}.prelu3" for k in range(len(model.levels)))


def test_the_face_is_the_best_box_and_its_gradcam_equals_pytorch_grad_cam(exported) -> None:
    from pytorch_grad_cam import GradCAM

    model, explainer = exported
    photo = data.astronaut()
    (result,) = explainer.explain_detections([photo], confidence=0.9, nms_iou=0.3, eigencam=False)
    best = max(result.boxes, key=lambda b: b.score)
    cx, cy = (best.xyxy[0] + best.xyxy[2]) / 2, (best.xyxy[1] + best.xyxy[3]) / 2
    assert FACE[0] <= cx <= FACE[2] and FACE[1] <= cy <= FACE[3], best
    x = explainer._decode([photo])[1]
    modules = dict(model.named_modules())
    compared = 0
    with GradCAM(model=model, target_layers=[modules[n] for n in explainer.layers]) as cam:
        for box, ours in zip(result.boxes[:4], result.maps["gradcam"][:4], strict=False):
            target = lambda out, b=box: out[4, b.anchor]  # noqa: E731
            reference = cam(input_tensor=torch.from_numpy(x), targets=[target])[0]
            assert float(reference.max()) > 0.5  # a map, not zeros
            assert np.abs(ours - reference).max() <= TOLERANCE
            compared += 1
    assert compared >= 2

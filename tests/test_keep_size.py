"""Dynamic H×W: an ONNX file exported with dynamic height and width serves images at their own size (keep-size), with
maps equal to pytorch-grad-cam's Grad-CAM at two sizes; a Resize after the layer pins H×W to --input-size and says so.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnxcam_export.api import export_onnx_file
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from small_models import GapNet
from torch import nn

from onnxcam import contract
from onnxcam.cli import main
from onnxcam.explainer import Explainer

LAYER = "/body/body.3/Relu_output_0"
SIZES = [(40, 56), (64, 48)]
TOLERANCE = 1e-4  # max |difference| of [0, 1] maps, as the classifier parity tests


def dynamic_onnx(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}, "logits": {0: "b"}},
    )
    return path


class Upsampled(GapNet):
    """GapNet with an FPN-style nearest upsample (a Resize) after the layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.interpolate(self.body(x), scale_factor=2.0, mode="nearest").mean((2, 3)))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("dynamic")
    torch.manual_seed(0)
    model = GapNet().eval()
    dynamic = folder / "x.onnx"
    export_onnx_file(dynamic_onnx(model, folder / "m.onnx"), dynamic, [LAYER], (32, 32), log=lambda _: None)
    return {"model": model, "dynamic": dynamic, "folder": folder}


def test_keep_size_maps_match_pytorch_grad_cam_at_two_sizes(files: dict) -> None:
    explainer = Explainer(files["dynamic"], provider="cpu")
    assert explainer.any_size
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in SIZES]
    ours = explainer.explain(images, target=3, keep_size=True)
    spec = explainer.preprocess
    model = files["model"]
    for image, result in zip(images, ours, strict=True):
        x = (image / 255.0 - np.array(spec.mean)) / np.array(spec.std)
        x = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32)
        with GradCAM(model=model, target_layers=[model.body[3]]) as cam:
            reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(3)])[0]
        assert result.maps["gradcam"].shape == image.shape[:2]
        assert np.abs(result.maps["gradcam"] - reference).max() < TOLERANCE


def test_keep_size_with_a_seed_per_image_matches_pytorch_grad_cam(files: dict) -> None:
    """keep_size with ``seed`` ``[N, K]``: image n explains ``Σ seed[n] ⊙ logits`` (signed weights), map and score as
    pytorch-grad-cam's Grad-CAM of that objective and the model's own logits (float32 tolerances)."""
    explainer = Explainer(files["dynamic"], provider="cpu")
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in SIZES]
    seeds = rng.normal(size=(len(images), *explainer.score_shape)).astype(np.float32)
    ours = explainer.explain(images, seed=seeds, keep_size=True)
    spec, model = explainer.preprocess, files["model"]
    for image, seed, result in zip(images, seeds, ours, strict=True):
        x = (image / 255.0 - np.array(spec.mean)) / np.array(spec.std)
        x = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32)
        weights = torch.tensor(seed)
        with GradCAM(model=model, target_layers=[model.body[3]]) as cam:
            reference = cam(input_tensor=x, targets=[lambda out, w=weights: (out * w).sum()])[0]
        assert result.maps["gradcam"].shape == image.shape[:2]
        assert np.abs(result.maps["gradcam"] - reference).max() < TOLERANCE
        expected = float((model(x)[0] * weights).sum().detach())
        assert abs(result.score - expected) <= 1e-5 * max(1.0, abs(expected))
    with pytest.raises(ValueError, match="seed of shape"):
        explainer.explain(images, seed=seeds[:1], keep_size=True)


def test_keep_size_cli_writes_maps_at_the_image_size_and_refuses_fixed_graphs(files: dict, tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, (44, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    out = tmp_path / "out"
    args = ["explain", str(files["dynamic"]), str(tmp_path / "a.png"), "-o", str(out), "--save", "npy", "--keep-size"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert np.load(next(out.glob("*.npy"))).shape == (44, 60)

    torch.manual_seed(0)
    pinned = tmp_path / "pinned.onnx"
    logs: list[str] = []
    export_onnx_file(dynamic_onnx(Upsampled(), tmp_path / "up.onnx"), pinned, [LAYER], (32, 32), log=logs.append)
    assert any(line.startswith("dynamic H/W pinned to 32×32") and "Resize" in line for line in logs), logs
    refused = CliRunner().invoke(main, ["explain", str(pinned), str(tmp_path / "a.png"), "-o", str(out), "--keep-size"])
    assert refused.exit_code == 2 and "takes 32x32 inputs only" in refused.output, refused.output


def test_pinned_resize_graph_matches_autograd(tmp_path: Path) -> None:
    """The pinned graph's gradient at the pinned size equals autograd's (the Resize rule's matrices are exact)."""
    torch.manual_seed(0)
    model = Upsampled().eval()
    explainer, _ = export_onnx_file(
        dynamic_onnx(model, tmp_path / "up.onnx"), None, [LAYER], (32, 32), log=lambda _: None
    )
    import onnxruntime as ort

    session = ort.InferenceSession(explainer.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    (g,) = session.run([contract.gradient_name(LAYER)], {"input": x.numpy(), "target": np.array([3, 5])})
    a = model.body(x)
    out = model.fc(F.interpolate(a, scale_factor=2.0, mode="nearest").mean((2, 3)))
    ref = torch.autograd.grad(out[0, 3] + out[1, 5], a)[0].numpy()
    assert np.abs(g - ref).max() <= 1e-5 * np.abs(ref).max()


def test_compat_takes_any_size_on_a_dynamic_graph(files: dict) -> None:
    """``onnxcam.compat.GradCAM`` on a dynamic-H×W graph takes a batch at a size other than the export's (as
    pytorch-grad-cam takes what the model takes): maps equal pytorch-grad-cam's at that size (a fixed-size graph
    refuses it: tests/test_compat.py)."""
    from onnxcam import compat

    model = files["model"]
    x = np.random.default_rng(4).standard_normal((2, 3, *SIZES[1])).astype(np.float32)
    with compat.GradCAM(model=str(files["dynamic"]), target_layers=[LAYER]) as cam:
        ours = cam(input_tensor=x, targets=[compat.ClassifierOutputTarget(3), compat.ClassifierOutputTarget(7)])
    with GradCAM(model=model, target_layers=[model.body[3]]) as cam:
        reference = cam(
            input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)]
        )
    assert ours.shape == reference.shape == (2, *SIZES[1])
    assert np.abs(ours - reference).max() < TOLERANCE


class TracedSize(GapNet):
    """GapNet plus a learned 32×32 bias on the input: a file exported with dynamic H×W that only runs at 32×32 (as a
    ViT whose trace baked its position-embedding size in)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(0.1 * torch.randn(1, 3, 32, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.bias)


def test_file_running_at_its_traced_size_only_is_pinned_and_says_so(tmp_path: Path) -> None:
    """The file declares dynamic H×W, but onnxruntime cannot run it at 64×64: export pins 32×32, logs why, and
    keep-size is refused in one line, not left to fail per image with onnxruntime's broadcast error."""
    torch.manual_seed(0)
    model = TracedSize().eval()
    source = dynamic_onnx(model, tmp_path / "m.onnx")
    lines: list[str] = []
    export_onnx_file(source, tmp_path / "x.onnx", [LAYER], (32, 32), log=lines.append)
    pinned = [line for line in lines if "does not run at 64×64" in line]
    assert len(pinned) == 1 and "H/W pinned to 32×32" in pinned[0], lines
    explainer = Explainer(tmp_path / "x.onnx", provider="cpu")
    assert not explainer.any_size
    with pytest.raises(ValueError, match=r"^keep-size: this explainer graph takes 32x32 inputs only") as refused:
        explainer.explain([np.zeros((48, 40, 3), np.uint8)], keep_size=True)
    assert "\n" not in str(refused.value)
    x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(explainer.scores(x), want, rtol=1e-5, atol=1e-5)

"""Token layouts that once drew the wrong map silently (a breaker's finds), on Hugging Face transformers built from a
config (random init, no download).

- Register tokens: ``Dinov2WithRegisters`` at 32 px, patch 8: ``1 + 4 + 4·4 = 21`` tokens are ``5 + 4×4``, not
  ``1 + 4×5`` (a flat token axis shows no side; both sides of a grid come from one stride and rounding).
- Hugging Face Swin: the final LayerNorm reads a residual sum that no module returns, so the default layer is that
  LayerNorm's output (``[N, 2·2, C]`` on a 64 px input), not a branch before the sum nor the pooled vector
  ``[N, C, 1]``, which is refused as a token map in one line.
- The same Swinv2 as an ONNX file (torchscript exporter): its token tensors have a symbolic count (padding
  arithmetic), measured by one run of the graph, so the default layer (the last block's tokens) and a named
  LayerNorm output export.

Reference: pytorch-grad-cam (``grad-cam`` 1.5.x) GradCAM with the token ``reshape_transform`` of its examples
(drop the prefix tokens, tokens → ``h × w``, channels first). Tolerance: 1e-4 on the [0, 1] maps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnxcam_export.api import ExportError, export_model, export_onnx_file
from onnxcam_export.layouts import LayoutError, classify
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from small_models import HFLogits
from test_transformers import tokens_to_map

from onnxcam.explainer import Explainer

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
CLASSES = (3, 7)


def images(size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)


def reference(model: torch.nn.Module, layer: str, x: np.ndarray, prefix: int) -> np.ndarray:
    target = [model.get_submodule(layer)]
    with GradCAM(model=model, target_layers=target, reshape_transform=tokens_to_map(prefix)) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(c) for c in CLASSES])


def ours(path: Path, x: np.ndarray) -> np.ndarray:
    results = Explainer(path, provider="cpu").explain_arrays(x, list(CLASSES), ["gradcam"])
    return np.stack([r.maps["gradcam"] for r in results])


def test_token_grid_sides_share_one_stride() -> None:
    """21 tokens of a 32×32 input: 5 prefix tokens and a 4×4 grid (stride 8), the smallest prefix with a square
    rest; 20 tokens of a 64×64 input: 4 + 4×4. A non-square input keeps its own aspect: 13 tokens of 64×48 are
    1 + 4×3 (stride 16)."""
    for tokens, size, want in ((21, (32, 32), (5, (4, 4))), (20, (64, 64), (4, (4, 4))), (13, (64, 48), (1, (4, 3)))):
        layout = classify("t", (1, tokens, 8), size)
        assert (layout.prefix, tuple(layout.grid)) == want


def test_pooled_vector_is_not_a_token_map() -> None:
    with pytest.raises(LayoutError, match=r"^layer 'pool' gives \['N', 128, 1\]: one value per position") as info:
        classify("pool", (1, 128, 1), (64, 64))
    assert "\n" not in str(info.value)
    assert classify("pool", (1, 128, 1), (64, 64), grid=(8, 16)).grid == (8, 16)  # 1-channel tokens, when told


def test_register_tokens_laid_out_as_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8,
        num_labels=10, num_register_tokens=4,
    )  # fmt: skip
    model = HFLogits(transformers.Dinov2WithRegistersForImageClassification(config)).eval()
    layer = "m.dinov2_with_registers.encoder.layer.1.norm1"
    lines: list[str] = []
    export_model(model, tmp_path / "dino.onnx", [layer], (32, 32), log=lines.append)
    assert any("tokens [N, 5 + 4×4, C]" in line for line in lines), lines
    x = images(32)
    assert np.abs(ours(tmp_path / "dino.onnx", x) - reference(model, layer, x, prefix=5)).max() <= TOLERANCE


def swin(kind: str) -> torch.nn.Module:
    """A small Hugging Face Swin (``swin``) or Swinv2 (``swinv2``): 64 px, last stage 2×2 with 128 channels."""
    model_class, config_class = {
        "swin": (transformers.SwinForImageClassification, transformers.SwinConfig),
        "swinv2": (transformers.Swinv2ForImageClassification, transformers.Swinv2Config),
    }[kind]
    torch.manual_seed(0)
    config = config_class(
        image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=2,
        num_labels=10,
    )  # fmt: skip
    return HFLogits(model_class(config)).eval()


@pytest.mark.parametrize("kind", ["swin", "swinv2"])
def test_hf_swin_default_layer_is_the_final_layer_norm(kind: str, tmp_path: Path) -> None:
    model = swin(kind)
    path = tmp_path / f"{kind}.onnx"
    export_model(model, path, None, (64, 64), exporter="torchscript", log=lambda _: None)
    assert list(Explainer(path, provider="cpu").layers) == [f"m.{kind}.layernorm"]
    x = images(64)
    assert np.abs(ours(path, x) - reference(model, f"m.{kind}.layernorm", x, prefix=0)).max() <= TOLERANCE


def test_hf_swin_onnx_file_tokens_measured_and_pooled_vector_refused(tmp_path: Path) -> None:
    model = swin("swinv2")
    source = tmp_path / "swinv2.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 3, 64, 64),), str(source), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
    )
    with pytest.raises(ExportError, match="one value per position, as a pooled vector") as info:
        export_onnx_file(source, tmp_path / "pool.onnx", ["/m/swinv2/pooler/GlobalAveragePool_output_0"], log=print)
    assert "\n" not in str(info.value)
    path = tmp_path / "ln.onnx"
    export_onnx_file(source, path, ["/m/swinv2/layernorm/LayerNormalization_output_0"], log=lambda _: None)
    x = images(64)
    assert np.abs(ours(path, x) - reference(model, "m.swinv2.layernorm", x, prefix=0)).max() <= TOLERANCE
    # no --layer: the last block's tokens, the final LayerNorm's input (an nn.Identity put in front of that
    # LayerNorm is where pytorch-grad-cam reads it)
    lines: list[str] = []
    export_onnx_file(source, tmp_path / "default.onnx", None, log=lines.append)
    assert "explaining tensor(s) /m/swinv2/encoder/layers.3/blocks.0/Add_1_output_0" in lines, lines
    model.m.swinv2.layernorm = torch.nn.Sequential(torch.nn.Identity(), model.m.swinv2.layernorm)
    want = reference(model, "m.swinv2.layernorm.0", x, prefix=0)
    assert np.abs(ours(tmp_path / "default.onnx", x) - want).max() <= TOLERANCE

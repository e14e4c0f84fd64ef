"""Token layers whose count fits several splits: the prefix (class, register tokens) told by traced positions.

timm's ViT with a class token and 4 register tokens on a 96×64 input has 29 tokens, ``5 + 6×4`` but also
``1 + 7×4`` (stride 13): the shape cannot tell them apart, the traced positions can (:func:`traced_prefix`: the
prefix tokens, learned parameters, stand nowhere in the image). The reference is pytorch-grad-cam (PyPI ``grad-cam``
1.5.x) with a ``reshape_transform`` dropping the 5 prefix tokens; tolerance 1e-4 max absolute difference on the
final [0, 1] maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.layouts import LayoutError
from onnxcam_export.token_order import traced_prefix
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from onnxcam.contract import Layout
from onnxcam.explainer import Explainer

timm = pytest.importorskip("timm")
NAN = complex(np.nan, np.nan)


def vit_reg4(size: tuple[int, int]) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_small_patch16_224", pretrained=False, img_size=size, depth=2, embed_dim=96, num_heads=2, reg_tokens=4
    ).eval()


def reference(model: torch.nn.Module, layer: str, x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM of classes 3 and 7 at ``layer``, the class and register tokens dropped."""

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return t[:, 5:].reshape(t.shape[0], *grid, t.shape[2]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])


def gradcam(path, x: np.ndarray) -> np.ndarray:
    explainer = Explainer(path, provider="cpu")
    return np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [3, 7], ["gradcam"])])


def test_traced_prefix_counts_leading_unknown_tokens_only_when_the_rest_are_known() -> None:
    place = np.broadcast_to((np.arange(6) / 6 + 0.5j)[None, :, None], (1, 6, 3)).copy()
    place[:, :2] = NAN
    assert traced_prefix(place) == 2
    assert traced_prefix(np.full((1, 6, 3), NAN)) is None  # all unknown: nothing to tell
    later = place.copy()
    later[:, 4] = NAN  # an unknown token among the patches
    assert traced_prefix(later) is None
    partly = place.copy()
    partly[:, 3, 0] = NAN  # a token known at some channels only
    assert traced_prefix(partly) is None


@pytest.mark.parametrize("size", [(96, 64), (64, 96)])
def test_register_tokens_are_split_off_and_gradcam_equals_pytorch_grad_cam(tmp_path, size) -> None:
    model = vit_reg4(size)
    grid = (size[0] // 16, size[1] // 16)
    messages: list[str] = []
    export_model(model, tmp_path / "m.onnx", None, size, exporter="torchscript", log=messages.append)
    layer = "blocks.1.norm1"
    assert f"layer '{layer}' is tokens [N, 5 + {grid[0]}×{grid[1]}, C]: exposed as [N, C, h, w] inside the graph" in (
        messages
    )
    assert any("first 5 token(s) have no image position" in m for m in messages)
    assert Explainer(tmp_path / "m.onnx", provider="cpu").metadata.layout(layer) == Layout("tokens", grid, 5)
    x = np.random.default_rng(0).normal(size=(2, 3, *size)).astype(np.float32)
    ref = reference(model, layer, x, grid)
    assert ref.max() > 0 and np.abs(gradcam(tmp_path / "m.onnx", x) - ref).max() <= 1e-4


def test_register_tokens_of_an_onnx_file_are_split_off(tmp_path) -> None:
    size = (96, 64)
    model = vit_reg4(size)
    source = tmp_path / "source.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, *size),), str(source), opset_version=17, dynamo=False)
    messages: list[str] = []
    export_onnx_file(source, tmp_path / "m.onnx", None, size, mean=[0], std=[1], log=messages.append)
    explainer = Explainer(tmp_path / "m.onnx", provider="cpu")
    assert explainer.metadata.layout(explainer.layers[0]) == Layout("tokens", (6, 4), 5), messages
    x = np.random.default_rng(0).normal(size=(2, 3, *size)).astype(np.float32)
    ref = reference(model, "blocks.1.norm1", x, (6, 4))
    assert ref.max() > 0 and np.abs(gradcam(tmp_path / "m.onnx", x) - ref).max() <= 1e-4


def test_a_given_prefix_the_positions_contradict_is_refused_in_one_line(tmp_path) -> None:
    with pytest.raises(LayoutError) as refused:
        export_model(vit_reg4((96, 64)), tmp_path / "m.onnx", None, (96, 64), prefix_tokens=1, log=lambda _: None)
    message = str(refused.value)
    assert "\n" not in message and "--prefix-tokens 5" in message and "1 + 7×4" in message
    assert not (tmp_path / "m.onnx").exists()

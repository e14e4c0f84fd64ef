"""Layers whose positions are not in row-major grid order (Hiera's unrolled tokens): token layers laid out by their
traced positions, other layouts refused in one line, never mapped row-major.

A tiny model reorders its patch tokens as timm's ``Hiera.unroll`` does (strided groups first) and restores them
afterwards (``reroll``); timm's ``hiera_tiny_224`` itself at 64×64. The reference is pytorch-grad-cam (PyPI
``grad-cam`` 1.5.x) with the layer's true spatial order as ``reshape_transform`` (the test's ``reroll``, timm's own
``Hiera.reroll``), tolerance 1e-4 max absolute difference on the final [0, 1] maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.layouts import LayoutError
from onnxcam_export.token_order import grid_order, in_order
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_transformers import TinyBlock
from torch import nn

from onnxcam.contract import Layout
from onnxcam.explainer import Explainer

QUIET = {"log": lambda _: None}
SIZE = 32


def unroll(x: torch.Tensor, side: int) -> torch.Tensor:
    """Tokens ``[N, side², C]`` in row-major order → every second row and column first (Hiera's unroll, one step)."""
    n, _, c = x.shape
    grid = x.reshape(n, side // 2, 2, side // 2, 2, c)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, c)


def reroll(x: torch.Tensor, side: int) -> torch.Tensor:
    """The inverse of :func:`unroll`."""
    n, _, c = x.shape
    grid = x.reshape(n, 2, 2, side // 2, side // 2, c)
    return grid.permute(0, 3, 1, 4, 2, 5).reshape(n, side * side, c)


class Reroll(nn.Module):
    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return reroll(x, self.side)


class AsMap(nn.Module):
    """Tokens ``[N, side², C]`` → ``[N, C, side, side]`` row-major, whatever their order."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.side, self.side)


class UnrolledViT(nn.Module):
    """Patch embedding (4×4 tokens), unroll, a transformer block, reroll, position embedding, a block; head on the
    token mean. With
    ``as_map``, the unrolled tokens also go through a map ``[N, C, h, w]`` (out of order) into the head."""

    def __init__(self, dim: int = 16, classes: int = 5, as_map: bool = False) -> None:
        super().__init__()
        self.side = SIZE // 8
        self.patch_embed = nn.Conv2d(3, dim, 8, 8)
        self.blocks = nn.Sequential(TinyBlock(dim), Reroll(self.side), TinyBlock(dim))
        self.as_map = AsMap(self.side) if as_map else None
        self.pos = nn.Parameter(torch.randn(1, self.side**2, dim))  # so that the head depends on the token order
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](unroll(self.patch_embed(x).flatten(2).transpose(1, 2), self.side))
        pooled = self.blocks[2](self.blocks[1](x) + self.pos).mean(1)
        return self.head(pooled + self.as_map(x).mean((2, 3)) if self.as_map else pooled)


def test_unroll_helpers_are_inverse() -> None:
    x = torch.randn(2, 16, 3)
    assert torch.equal(reroll(unroll(x, 4), 4), x) and not torch.equal(unroll(x, 4), x)


def test_in_order_sees_a_swap_and_ignores_unknown_positions() -> None:
    ys, xs = np.meshgrid((np.arange(3) + 0.5) / 3, (np.arange(4) + 0.5) / 4, indexing="ij")
    place = np.broadcast_to(ys + 1j * xs, (1, 2, 3, 4)).copy()
    assert in_order(place)
    swapped = place.copy()
    swapped[..., 0, [1, 2]] = swapped[..., 0, [2, 1]]
    assert not in_order(swapped)
    unknown = swapped.copy()
    unknown[..., 0, 1] = complex(np.nan, np.nan)  # the swap no longer seen: nothing to compare it with
    assert in_order(unknown)


def test_grid_order_inverts_a_permuted_grid_and_refuses_a_non_grid() -> None:
    ys, xs = np.meshgrid((np.arange(2) + 0.5) / 2, (np.arange(3) + 0.5) / 3, indexing="ij")
    cells = (ys + 1j * xs).reshape(-1)
    shuffled = np.random.default_rng(0).permutation(6)
    place = np.broadcast_to(cells[shuffled][None, :, None], (1, 6, 4))
    order = grid_order(place, Layout("tokens", (2, 3)))
    assert order is not None and np.array_equal(shuffled[list(order)], np.arange(6))
    assert grid_order(place, Layout("tokens", (3, 2))) is None  # 2 rows of 3, not 3 rows of 2
    merged = place.copy()
    merged[0, 0] = merged[0, 1]  # two tokens at one place
    assert grid_order(merged, Layout("tokens", (2, 3))) is None


def test_a_map_of_unrolled_tokens_is_refused_in_one_line(tmp_path) -> None:
    torch.manual_seed(0)
    with pytest.raises(LayoutError) as refused:
        export_model(UnrolledViT(as_map=True).eval(), tmp_path / "m.onnx", ["as_map"], (SIZE, SIZE), **QUIET)
    message = str(refused.value)
    assert "\n" not in message and "layer 'as_map'" in message and "not in row-major grid order" in message
    assert "reordered by node" in message and "default layer" in message
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("layer", "order"), [("blocks.0", lambda t: reroll(t, SIZE // 8)), ("blocks.1", None)])
def test_unrolled_and_rerolled_tokens_equal_pytorch_grad_cam(tmp_path, layer: str, order) -> None:
    torch.manual_seed(0)
    model = UnrolledViT().eval()
    path = tmp_path / "m.onnx"
    messages: list[str] = []
    export_model(model, path, [layer], (SIZE, SIZE), log=messages.append)
    assert any("laid out by their traced positions" in m for m in messages) == (order is not None)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    explainer = Explainer(path, provider="cpu")
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [1, 3], ["gradcam"])])
    out = explainer.run(x, np.array([1, 3]))  # the head graph lays the map back out in the model's order
    np.testing.assert_allclose(explainer.head_scores(layer, out.activations[layer]), out.scores, atol=1e-5)

    def grid(t: torch.Tensor) -> torch.Tensor:
        t = order(t) if order else t
        return t.reshape(t.shape[0], model.side, model.side, t.shape[2]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=grid) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4


def test_unrolled_tokens_of_an_onnx_file_equal_pytorch_grad_cam(tmp_path) -> None:
    torch.manual_seed(0)
    model = UnrolledViT().eval()
    source = tmp_path / "source.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, SIZE, SIZE),), str(source), opset_version=17, dynamo=False)
    tensor = "/blocks.0/Add_2_output_0"  # the first block's output, as the torchscript exporter names it
    messages: list[str] = []
    export_onnx_file(source, tmp_path / "m.onnx", [tensor], (SIZE, SIZE), mean=[0], std=[1], log=messages.append)
    assert any("laid out by their traced positions" in m for m in messages)
    x = np.random.default_rng(0).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    explainer = Explainer(tmp_path / "m.onnx", provider="cpu")
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [1, 3], ["gradcam"])])

    def grid(t: torch.Tensor) -> torch.Tensor:
        t = reroll(t, model.side)
        return t.reshape(t.shape[0], model.side, model.side, t.shape[2]).permute(0, 3, 1, 2)

    with GradCAM(model=model, target_layers=[model.blocks[0]], reshape_transform=grid) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4


@pytest.fixture(scope="module")
def hiera():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("hiera_tiny_224", pretrained=False, num_classes=10, img_size=(64, 64)).eval()
    with torch.no_grad():  # timm zero-initialises the head: all-zero gradients would hide a wrong layout
        for name, p in model.named_parameters():
            if not p.any() and not name.endswith("bias"):
                p.normal_(0, 0.02 if p.dim() > 1 else 1.0)
    return model


@pytest.mark.parametrize("layer", ["blocks.9", None])  # stage 3: unrolled; the default, blocks.11: in order
def test_hiera_equals_pytorch_grad_cam_with_reroll(hiera, tmp_path, layer: str | None) -> None:
    path = tmp_path / "h.onnx"
    messages: list[str] = []
    export_model(hiera, path, [layer] if layer else None, (64, 64), exporter="torchscript", log=messages.append)
    explainer = Explainer(path, provider="cpu")
    assert explainer.layers == (layer or "blocks.11",)
    block = int(explainer.layers[0].split(".")[1])
    assert any("unroll" in m and "traced positions" in m for m in messages) == (block == 9)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [3, 7], ["gradcam"])])

    def rerolled(t: torch.Tensor) -> torch.Tensor:  # timm's own spatial order of the block's tokens
        return hiera.reroll(t, block).permute(0, 3, 1, 2)

    with GradCAM(model=hiera, target_layers=[hiera.blocks[block]], reshape_transform=rerolled) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4

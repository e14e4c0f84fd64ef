"""The default layer is a map on a grid of the input, never an attention tensor that only fits the input's bounds.

timm's SigLIP-style ViT (``vit_base_patch16_siglip_224``: no class token, attention-pooling head), random init, cut to
2 blocks with 2 heads at 64×64: the pooling head's learned query ``attn_pool.q_norm`` ``[N, 2 heads, 1 query, 48]``
once passed as a 2×1 channels-last map (the same for every image). The default is now a 4×4 token map, and its
Grad-CAM equals pytorch-grad-cam's (``grad-cam`` 1.5.x, tokens → 4×4 grid, no prefix) within 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model
from onnxcam_export.layouts import is_input_grid
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from test_transformers import tokens_to_map

from onnxcam.explainer import Explainer

timm = pytest.importorskip("timm")


def test_input_grids_have_one_stride() -> None:
    assert is_input_grid((4, 4), (64, 64)) and is_input_grid((6, 4), (96, 64))
    assert is_input_grid((14, 14), (16, 16)) and is_input_grid((22, 14), (24, 16))  # an unpadded 3×3 conv
    assert not is_input_grid((2, 1), (64, 64)) and not is_input_grid((3, 1), (240, 240))


def test_attention_pooling_query_is_not_the_default(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_base_patch16_siglip_224", pretrained=False, img_size=64, depth=2, embed_dim=96, num_heads=2
    ).eval()
    path = tmp_path / "siglip.onnx"
    export_model(model, path, None, (64, 64), exporter="torchscript", log=lambda _: None)
    explainer = Explainer(path, provider="cpu")
    (layer,) = explainer.layers
    layout = explainer.metadata.layout(layer)
    assert (layout.kind, layout.grid, layout.prefix) == ("tokens", (4, 4), 0), (layer, layout)
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    ours = np.stack([r.maps["gradcam"] for r in explainer.explain_arrays(x, [3, 7], ["gradcam"])])
    target = [model.get_submodule(layer)]
    with GradCAM(model=model, target_layers=target, reshape_transform=tokens_to_map(0)) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(7)])
    assert np.abs(ours - ref).max() <= 1e-4

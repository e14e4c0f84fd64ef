"""Real transformer architectures (random init): default layer, gradient CAMs vs pytorch-grad-cam, export of hybrids.

Each model is exported once (module fixture) at the smallest input it accepts, without ``--layer``: the layer export
picks is asserted (the default per family) and its final maps are compared with pytorch-grad-cam (PyPI ``grad-cam``
1.5.x) on the same layer with the ``reshape_transform`` of its examples (ViT: drop the class token, tokens → grid,
channels first; Swin: ``permute(0, 3, 1, 2)``), two real photos, tolerance 1e-4 max absolute difference, times
``max(1, 1e-2·κ)`` where the method's arithmetic amplifies float32 rounding by ``κ`` (:func:`condition`; XGrad-CAM as
in ``test_parity_gradcam.py``).
Parameters initialised to zero (torchvision's ViT head, LeViT's residual BatchNorm scales and attention biases) get
random values, so gradients are non-zero and token maps are not constant.
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import torch
from onnxcam_export.api import export_model
from pytorch_grad_cam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage import data
from small_models import HFLogits
from test_transformers import tokens_to_map as cls_tokens
from torch import nn

from onnxcam.explainer import Explainer

pytestmark = pytest.mark.heavy  # ~25 min of exports on 2 cores: run by hand (scripts/test.sh -m heavy)
timm = pytest.importorskip("timm")
TOLERANCE = 1e-4
METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "gradcamelementwise": GradCAMElementWise,
    "layercam": LayerCAM,
}


def hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
        num_labels=10,
    )
    return HFLogits(transformers.ViTForImageClassification(config))


def tv(name: str, **kwargs: object):
    import torchvision

    return lambda: torchvision.models.get_model(name, weights=None, **kwargs)


def tm(name: str, **kwargs: object):
    return lambda: timm.create_model(name, pretrained=False, **kwargs)


def channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


# id, builder, input size, exporter, expected default layer, pytorch-grad-cam reshape_transform
PARITY = [
    ("timm-vit_tiny", tm("vit_tiny_patch16_224", img_size=64), 64, "dynamo", "blocks.11.norm1", cls_tokens(1)),
    ("timm-deit_tiny", tm("deit_tiny_patch16_224", img_size=64), 64, "torchscript", "blocks.11.norm1", cls_tokens(1)),
    ("timm-swin_tiny", tm("swin_tiny_patch4_window7_224"), 224, "torchscript", "layers.3", channels_last),
    (
        "tv-vit_b_16",
        tv("vit_b_16", image_size=64),
        64,
        "dynamo",
        "encoder.layers.encoder_layer_11.ln_1",
        cls_tokens(1),
    ),
    ("tv-swin_t", tv("swin_t"), 64, "torchscript", "features.7", channels_last),
    ("tv-maxvit_t", tv("maxvit_t"), 224, "torchscript", "blocks.3", None),
    ("hf-vit", hf_vit, 64, "dynamo", "m.vit.layers.1.layernorm_before", cls_tokens(1)),
]
# id, builder, input size: export + verify + explain
HYBRIDS = [
    ("levit_128s", tm("levit_128s", img_size=128), 128),
    ("efficientformerv2_s0", tm("efficientformerv2_s0", img_size=64), 64),
    ("fastvit_t8", tm("fastvit_t8"), 64),
    ("mobilevitv2_050", tm("mobilevitv2_050"), 64),
]


def build(builder) -> nn.Module:
    torch.manual_seed(0)
    model = builder().eval()
    with torch.no_grad():  # zero-initialised heads, residual BatchNorm scales, attention biases: degenerate maps
        for name, p in model.named_parameters():
            if not p.any() and not name.endswith("bias"):
                p.normal_(0, 0.02 if p.dim() > 1 else 1.0)
    return model


def photos(size: int) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = [cv2.resize(i, (size, size), interpolation=cv2.INTER_AREA) for i in (data.chelsea(), data.coffee())]
    return np.stack([((i / 255.0 - mean) / std).transpose(2, 0, 1) for i in images]).astype(np.float32)


def exported(tmp_path_factory, name: str, builder, size: int, exporter: str = "dynamo"):
    model = build(builder)
    path = tmp_path_factory.mktemp("zoo") / f"{name}.onnx"
    messages: list[str] = []
    started = time.perf_counter()
    _, report = export_model(model, path, None, (size, size), exporter=exporter, log=messages.append)
    print(f"{name}: export {time.perf_counter() - started:.0f} s; " + " | ".join(messages))
    assert report is not None and report.worst <= 1e-4
    return model, Explainer(path, provider="cpu")


def condition(explainer: Explainer, x: np.ndarray, targets: list[int], layer: str, method: str) -> float:
    """How much float32 rounding of ``A`` and ``G`` (~1e-6 relative, onnxruntime vs PyTorch) is amplified in the final
    map: XGrad-CAM divides by ``Σ_ij A_k`` (``κ = max_k Σ|A_k| / |Σ A_k|``); HiResCAM sums ``G ⊙ A`` over channels
    (``κ = max Σ_k|G_k A_k| / range(Σ_k G_k A_k)``: on random-init Swin the per-position sums cancel to ~1e-6 of their
    terms). 1 for the other methods."""
    out = explainer.run(x, np.array(targets))
    a, g = out.activations[layer].astype(np.float64), out.gradients[layer].astype(np.float64)
    if method == "xgradcam":
        return float((np.abs(a).sum(axis=(2, 3)) / np.abs(a.sum(axis=(2, 3)))).max())
    if method == "hirescam":
        cam = np.maximum((g * a).sum(1), 0)
        spread = (cam.max(axis=(1, 2)) - cam.min(axis=(1, 2)))[:, None, None]
        return float((np.abs(g * a).sum(1) / np.maximum(spread, 1e-30)).max())
    return 1.0


@pytest.fixture(scope="module", params=PARITY, ids=[p[0] for p in PARITY])
def parity(request, tmp_path_factory):
    name, builder, size, exporter, layer, reshape = request.param
    model, explainer = exported(tmp_path_factory, name, builder, size, exporter)
    return model, explainer, size, layer, reshape


@pytest.mark.parametrize("method", list(METHODS))
def test_gradient_cams_equal_pytorch_grad_cam_on_the_default_layer(parity, method: str) -> None:
    model, explainer, size, layer, reshape = parity
    assert explainer.layers == (layer,)
    x = photos(size)
    targets = [3, 7]
    ours = np.stack([r.maps[method] for r in explainer.explain_arrays(x, targets, [method])])
    with METHODS[method](model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in targets])
    diff = float(np.abs(ours - ref).max())
    tolerance = TOLERANCE * max(1.0, 1e-2 * condition(explainer, x, targets, layer, method))
    print(f"{method}: max |onnxcam - pytorch-grad-cam| = {diff:.1e} (tolerance {tolerance:.1e})")
    assert ref.max() > 0 and diff <= tolerance


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize(("name", "builder", "size"), HYBRIDS, ids=[h[0] for h in HYBRIDS])
def test_hybrids_export_verify_and_explain(tmp_path_factory, name: str, builder, size: int, exporter: str) -> None:
    _, explainer = exported(tmp_path_factory, f"{name}-{exporter}", builder, size, exporter)
    (result,) = explainer.explain_arrays(photos(size)[:1], None, ["gradcam", "xgradcam"])
    for method, cam in result.maps.items():  # the gradients themselves were verified against float64 autograd
        assert cam.shape == (size, size) and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1, method

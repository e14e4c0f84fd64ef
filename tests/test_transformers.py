"""Token and channels-last layers (ViT, Swin, hybrids), the default layer, and layer names (aliases, ``name#k``).

Fast tests use tiny ViT-/Swin-like modules built here; the reference is pytorch-grad-cam (PyPI ``grad-cam`` 1.5.x)
with the ``reshape_transform`` its examples give (ViT: drop the prefix tokens, tokens → ``h × w``, channels first;
Swin: ``permute(0, 3, 1, 2)``), or ``torch.autograd`` through forward hooks. Tolerance: 1e-4 max absolute difference
on the final [0, 1] maps, 1e-4 relative on gradients.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.layer_choice import choose_default
from onnxcam_export.layers import LayerError
from onnxcam_export.layouts import LayoutError, classify, onnx_layout
from onnxcam_export.torch_capture import module_calls
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from onnxcam import compat, contract
from onnxcam.explainer import Explainer
from onnxcam.model_file import describe

QUIET = {"log": lambda _: None}


class TinyBlock(nn.Module):
    """Pre-norm transformer block on tokens ``[N, T, C]``: single-head attention, then an MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.proj((q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1) @ v)
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, ``prefix`` learned tokens (class token first), two blocks; head on the class token (or the
    token mean without prefix, as LeViT)."""

    def __init__(self, prefix: int = 1, dim: int = 16, size: int = 32, patch: int = 8, classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.prefix = nn.Parameter(torch.randn(1, prefix, dim)) if prefix else None
        self.pos = nn.Parameter(0.1 * torch.randn(1, prefix + (size // patch) ** 2, dim))
        self.blocks = nn.Sequential(TinyBlock(dim), TinyBlock(dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])  # no -1: head graphs run on empty batches
        if self.prefix is not None:
            x = torch.cat([self.prefix.expand(x.shape[0], -1, -1), x], 1)
        x = self.norm(self.blocks(x + self.pos))
        return self.head(x[:, 0] if self.prefix is not None else x.mean(1))


class TinyStage(nn.Module):
    """Channels-last stage ``[N, h, w, C]``: a depthwise conv mixing positions, then a pre-norm MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(x))


class Merge(nn.Module):
    """Swin's patch merging on ``[N, h, w, C]``: 2×2 neighbours concatenated, then a linear map to ``C``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, i::2, j::2] for i in (0, 1) for j in (0, 1)]
        return self.reduction(torch.cat(parts, -1))


class TinySwin(nn.Module):
    """Swin-like: patch embedding to channels-last, two stages with patch merging between them (``layers`` holds
    stages of different shapes, as timm's), final LayerNorm, mean over positions, head."""

    def __init__(self, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.stages = nn.Sequential(TinyStage(dim), nn.Sequential(Merge(dim), TinyStage(dim)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stages(self.patch_embed(x).permute(0, 2, 3, 1))).mean((1, 2)))


class SharedAct(nn.Module):
    """EfficientNet-style: one activation module applied after the stem and after the head conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8)
        self.head_conv, self.bn1 = nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.head_conv(self.act(self.bn0(self.stem(x))))))
        return self.fc(x.mean((2, 3)))


def seeded(cls: type[nn.Module], **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def batch(size: int = 32, n: int = 2) -> np.ndarray:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()


def tokens_to_map(prefix: int):
    def reshape(t: torch.Tensor) -> torch.Tensor:
        t = t[:, prefix:]
        side = round(t.shape[1] ** 0.5)
        return t.reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return reshape


def pgc_gradcam(model: nn.Module, layer: str, x: np.ndarray, targets: list[int], reshape) -> np.ndarray:
    with GradCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=reshape) as cam:
        return cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in targets])


def export(model: nn.Module, tmp_path, layers, size: int = 32, exporter: str = "torchscript", **options):
    path = tmp_path / "m.onnx"
    export_model(model, path, layers, (size, size), exporter=exporter, **QUIET, **options)
    return Explainer(path, provider="cpu")


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_token_layer_equals_pytorch_grad_cam_with_reshape_transform(tmp_path, exporter: str) -> None:
    model = seeded(TinyViT)
    explainer = export(model, tmp_path, ["blocks.1.norm1"], exporter=exporter)
    assert explainer.metadata.layout("blocks.1.norm1") == contract.Layout("tokens", (4, 4), 1)
    x = batch()
    ours = compat.GradCAM(model=explainer, target_layers=["blocks.1.norm1"])(x, [compat.ClassifierOutputTarget(3)] * 2)
    ref = pgc_gradcam(model, "blocks.1.norm1", x, [3, 3], tokens_to_map(1))
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4
    info = describe(tmp_path / "m.onnx")
    assert "layout of blocks.1.norm1: tokens [N, 1 + 4×4, C]" in info and "activation:blocks.1.norm1" in info
    assert explainer.metadata.heads == ()  # the class token is not part of the map: no head graph


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_channels_last_layer_equals_pytorch_grad_cam_and_head_is_exact(tmp_path, exporter: str) -> None:
    model = seeded(TinySwin)
    explainer = export(model, tmp_path, ["stages.1"], exporter=exporter)
    assert explainer.metadata.layout("stages.1").kind == "channels-last"
    x = batch()
    ours = compat.GradCAM(model=explainer, target_layers=["stages.1"])(x, [compat.ClassifierOutputTarget(2)] * 2)
    ref = pgc_gradcam(model, "stages.1", x, [2, 2], lambda t: t.permute(0, 3, 1, 2))
    assert np.abs(ours - ref).max() <= 1e-4
    out = explainer.run(x, np.array([2, 2]))
    activation = out.activations["stages.1"]
    assert activation.shape == (2, 16, 4, 4)  # NCHW, from the model's [N, 4, 4, 16]
    scores = explainer.head_scores("stages.1", activation)  # head input NCHW → laid back out inside the graph
    np.testing.assert_allclose(scores, out.scores, rtol=1e-5, atol=1e-5)


def test_prefix_free_tokens_have_an_exact_head(tmp_path) -> None:
    model = seeded(TinyViT, prefix=0)
    explainer = export(model, tmp_path, ["blocks.1"])
    assert explainer.metadata.layout("blocks.1") == contract.Layout("tokens", (4, 4), 0)
    x = batch()
    out = explainer.run(x, np.array([0, 1]))
    activation = out.activations["blocks.1"]
    with torch.no_grad():
        tokens = model.blocks(model.patch_embed(torch.from_numpy(x)).flatten(2).transpose(1, 2) + model.pos)
    np.testing.assert_allclose(activation, tokens_to_map(0)(tokens).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(explainer.head_scores("blocks.1", activation), out.scores, atol=1e-5)


@pytest.mark.parametrize(
    ("cls", "kwargs", "layer", "kind"),
    [
        (TinyViT, {}, "blocks.1.norm1", "tokens"),
        (TinyViT, {"prefix": 0}, "blocks", "tokens"),
        (TinySwin, {}, "stages.1", "channels-last"),
        (SharedAct, {}, "act#2", "nchw"),
    ],
    ids=["vit", "tokens-mean-head", "swin", "cnn-shared-activation"],
)
def test_default_layer(cls, kwargs, layer: str, kind: str) -> None:
    model = seeded(cls, **kwargs)
    name, layout, _ = choose_default(model, module_calls(model, (3, 32, 32)), (32, 32))
    assert (name, layout.kind) == (layer, kind)


@pytest.mark.parametrize(
    ("name", "size", "kwargs", "layer"),
    [("levit_128s", 128, {"img_size": 128}, "stages.2"), ("mobilevitv2_050", 64, {}, "final_conv")],
)
def test_default_layer_of_a_hybrid_is_its_last_stage(name: str, size: int, kwargs: dict, layer: str) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    calls = module_calls(model, (3, size, size))
    chosen, layout, _ = choose_default(model, calls, (size, size))
    assert chosen == layer and layout.prefix == 0
    if name == "mobilevitv2_050":  # the same tensor as the last stage's output, not the conv before its BatchNorm
        assert "stages.4" in next(c for c in calls if layer in [c.name, *c.aliases]).aliases


def test_shared_module_is_named_by_call(tmp_path) -> None:
    model = seeded(SharedAct)
    with pytest.raises(LayerError, match=r"'act' is a module that runs 2 times .*act#1 .*act#2.*--layer act#2"):
        export_model(model, None, ["act"], (32, 32), exporter="torchscript", verify=False, **QUIET)
    explainer = export(model, tmp_path, ["act#1", "act#2"])
    x = batch()
    out = explainer.run(x, np.array([1, 4]))
    seen: list[torch.Tensor] = []

    def keep(_m, _i, output):
        seen.append(output)
        return output.clone()

    handle = model.act.register_forward_hook(keep)
    scores = model(torch.from_numpy(x))
    handle.remove()
    grads = torch.autograd.grad(scores[0, 1] + scores[1, 4], seen)
    for k, (a, g) in enumerate(zip(seen, grads, strict=True), 1):
        np.testing.assert_allclose(out.activations[f"act#{k}"], a.detach().numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(out.gradients[f"act#{k}"], g.numpy(), rtol=1e-4, atol=1e-6)


def test_two_names_of_one_tensor_both_work(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    model = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    torch.manual_seed(0)
    explainer = export(model.eval(), tmp_path, ["0.1", "0.1.1"])  # the inner Sequential returns its ReLU's output
    out = explainer.run(batch(), np.array([0, 3]))
    np.testing.assert_array_equal(out.activations["0.1"], out.activations["0.1.1"])
    np.testing.assert_array_equal(out.gradients["0.1"], out.gradients["0.1.1"])
    assert np.abs(out.gradients["0.1"]).max() > 0


def test_layouts_are_inferred_from_the_shape_or_refused_in_one_line() -> None:
    assert classify("a", (1, 768, 7, 7), (224, 224)).kind == "nchw"
    assert classify("a", (1, 7, 7, 768), (224, 224)).kind == "channels-last"
    assert classify("a", (1, 197, 192), (224, 224)) == contract.Layout("tokens", (14, 14), 1)
    assert classify("a", (1, 198, 192), (224, 224)) == contract.Layout("tokens", (14, 14), 2)  # DeiT distilled
    assert classify("a", (1, 201, 192), (224, 224)) == contract.Layout("tokens", (14, 14), 5)  # 4 registers
    assert classify("a", (1, 16, 384), (224, 224), grid=(4, 4)) == contract.Layout("tokens", (4, 4), 0)
    assert classify("a", (1, 8, 8, 8), (64, 64), hint="channels-last").kind == "channels-last"
    for shape, match in [((1, 192), "not a feature map"), ((1, 8, 8, 8), "--layer-layout"), ((1, 199, 8), "grid")]:
        with pytest.raises(LayoutError, match=match) as info:
            classify("a", shape, (64, 64))
        assert "\n" not in str(info.value) and "layer 'a' gives" in str(info.value)


def test_onnx_sources_take_tokens_and_refuse_channels_last_in_one_line() -> None:
    assert onnx_layout("t", ["N", 16, 8, 8], (32, 32)) == contract.Layout()  # NCHW passes
    assert onnx_layout("t", ["N", 8, 8, 8], (32, 32)) == contract.Layout()  # could be either: NCHW, as before
    assert onnx_layout("t", ["N", 17, 32], (32, 32)) == contract.Layout("tokens", (4, 4), 1)
    with pytest.raises(
        LayoutError,
        match=r"tensor 't' .* ONNX sources are explained at NCHW and token \[N, T, C\] tensors, and at chan",
    ) as e:
        onnx_layout("t", ["N", 8, 8, 96], (32, 32))
    assert "\n" not in str(e.value)
    with pytest.raises(LayoutError, match=r"cannot split 199 tokens"):
        onnx_layout("t", ["N", 199, 32], (64, 64))


def torchvision_vit(head: bool = True) -> nn.Module:
    """torchvision's ViT, small: 32 px, 8-px patches (1 + 4×4 tokens), 2 layers, 2 heads, width 32; its head is
    zero-initialised (no gradient anywhere) unless ``head``."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5).eval()
    if head:
        nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def onnx_file(model: nn.Module, path, opset: int = 18) -> str:
    """``torch.onnx.export`` of ``model`` as a foreign ONNX file (TorchScript exporter, dynamic batch)."""
    torch.onnx.export(
        model,
        (torch.randn(1, 3, 32, 32),),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    return str(path)


def explains_like_pytorch_grad_cam(
    model: nn.Module,
    source: str,
    layer: str,
    tmp_path,
    module: str = "encoder.layers.encoder_layer_1.ln_1",
    prefix: int = 1,
    target: int = 3,
) -> None:
    """Exporting ``source`` without ``--layer`` explains ``layer`` (tokens ``prefix + 4×4``), verified by finite
    differences, and its Grad-CAM equals pytorch-grad-cam's on ``module`` of ``model`` (1e-4)."""
    logs: list[str] = []
    export_onnx_file(source, tmp_path / "e.onnx", None, (32, 32), log=logs.append)
    assert f"explaining tensor(s) {layer}" in logs
    assert any(line.startswith("verified against float64 finite differences") for line in logs)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert explainer.metadata.layout(layer) == contract.Layout("tokens", (4, 4), prefix)
    x = batch()
    ours = compat.GradCAM(model=explainer, target_layers=[layer])(x, [compat.ClassifierOutputTarget(target)] * 2)
    ref = pgc_gradcam(model, module, x, [target, target], tokens_to_map(prefix))
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4


def test_onnx_vit_default_is_the_last_norm1_and_equals_pytorch_grad_cam(tmp_path) -> None:
    """No NCHW map after the patch embedding: the default is ``encoder_layer_1.ln_1``'s output, laid out as tokens
    (the class token dropped)."""
    model = torchvision_vit()
    source = onnx_file(model, tmp_path / "vit.onnx")
    explains_like_pytorch_grad_cam(
        model, source, "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0", tmp_path
    )


def test_onnx_vit_at_opset_14_defaults_to_the_decomposed_norm1(tmp_path) -> None:
    """Opset 14 has no LayerNormalization: the exporter writes ``ln_1`` as ReduceMean … Sqrt, Div, Mul(γ), Add(β);
    that chain's output is the default, as the op's is at opset 18 (never an attention tensor)."""
    model = torchvision_vit()
    source = onnx_file(model, tmp_path / "vit.onnx", opset=14)
    assert not any(n.op_type == "LayerNormalization" for n in onnx.load(source).graph.node)
    explains_like_pytorch_grad_cam(model, source, "/encoder/layers/encoder_layer_1/ln_1/Add_1_output_0", tmp_path)


class ManualRMSNorm(nn.Module):
    """RMSNorm written out (``x / sqrt(mean(x²) + eps) · γ``): no LayerNorm in the graph, as the opset-14 exporter has
    no ``aten::rms_norm``."""

    def __init__(self, dim: int, **_: object) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


def test_onnx_token_model_without_a_recognised_norm_is_refused_not_explained_at_an_attention(tmp_path) -> None:
    """timm's ViT with a norm that is no LayerNorm: its last 4-D tensor is an attention ``[N, T, heads, d]``; the
    default is refused in one line naming token tensors, never that attention."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=5,
        norm_layer=ManualRMSNorm,
    ).eval()
    source = onnx_file(model, tmp_path / "vit.onnx", opset=14)
    with pytest.raises(LayerError, match=r"no default layer for this token model: .*attention.* --layer /blocks/") as e:
        export_onnx_file(source, None, None, (32, 32), **QUIET)
    assert "\n" not in str(e.value)


def tiny_swin(library: str) -> tuple[nn.Module, str]:
    """A two-stage Swin on 32 px (4-px patches, 4×4 windows, width 16; 8×8 then 4×4 positions), channels-last
    ``[N, h, w, C]`` throughout, and the module whose output is the PyTorch path's default (the last stage's)."""
    torch.manual_seed(0)
    if library == "timm":
        import timm

        model = timm.create_model(
            "swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
            num_classes=5,
        )  # fmt: skip
        return model.eval(), "layers.1"
    from torchvision.models.swin_transformer import SwinTransformer

    model = SwinTransformer([4, 4], 16, [1, 1], [1, 2], [4, 4], num_classes=5).eval()
    nn.init.normal_(model.head.weight, std=0.5)  # torchvision's head starts at 0: no gradient
    return model, "features.3"


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_onnx_swin_default_is_the_last_stage_channels_last_and_equals_pytorch_grad_cam(tmp_path, library) -> None:
    """Opset 13 (no LayerNormalization op): the default skips the final LayerNorm (and torchvision's permute) to the
    last stage's output, as the PyTorch path does; it is laid out channels-last (a LayerNorm over C reads it), and
    its Grad-CAM equals pytorch-grad-cam's with Swin's ``permute(0, 3, 1, 2)`` reshape transform (1e-4)."""
    model, stage = tiny_swin(library)
    assert choose_default(model, module_calls(model, (3, 32, 32)), (32, 32))[0] == stage
    source = onnx_file(model, tmp_path / "swin.onnx", opset=13)
    logs: list[str] = []
    export_onnx_file(source, tmp_path / "e.onnx", None, (32, 32), log=logs.append)
    assert any(line.startswith("verified against float64 finite differences") for line in logs)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    layer = explainer.metadata.layers[0]
    assert explainer.metadata.layout(layer) == contract.Layout("channels-last")
    x = batch()
    ours = compat.GradCAM(model=explainer, target_layers=[layer])(x, [compat.ClassifierOutputTarget(3)] * 2)
    ref = pgc_gradcam(model, stage, x, [3, 3], lambda t: t.permute(0, 3, 1, 2))
    assert ref.max() > 0 and np.abs(ours - ref).max() <= 1e-4


class ChannelsLastCNN(nn.Module):
    """Conv, permute to ``[N, h, w, C]``, ReLU, mean over positions, linear: channels-last that no LayerNorm or MatMul
    over ``C`` shows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 96, 3, stride=4), nn.Linear(96, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).permute(0, 2, 3, 1).relu().mean((1, 2)))


def test_onnx_channels_last_without_evidence_is_refused_in_one_line(tmp_path) -> None:
    source = onnx_file(seeded(ChannelsLastCNN), tmp_path / "cl.onnx", opset=13)
    with pytest.raises(
        LayoutError, match=r"looks channels-last .* only where a LayerNorm or MatMul over C shows it"
    ) as e:
        export_onnx_file(source, None, None, (32, 32), **QUIET)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_onnx_vit_from_the_dynamo_exporter_gets_the_same_default(tmp_path) -> None:
    """The dynamo exporter's file (dynamic batch) names the same tensor ``layer_norm_k``: the third LayerNorm."""
    model = torchvision_vit()
    source = tmp_path / "vit.onnx"
    batch_dim = {"x": {0: torch.export.Dim("batch")}}
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), str(source), dynamo=True, dynamic_shapes=batch_dim)
    norms = [n.output[0] for n in onnx.load(source).graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 5  # ln_1, ln_2 of two layers, the final ln
    explains_like_pytorch_grad_cam(model, str(source), norms[2], tmp_path)


def test_onnx_token_mean_model_default_is_the_last_block_before_the_final_norm(tmp_path) -> None:
    """No class token (a token mean feeds the head): the tensor the final LayerNorm reads, the blocks' output, as
    the PyTorch path's default ``blocks``; its Grad-CAM equals pytorch-grad-cam's there."""
    model = seeded(TinyViT, prefix=0)
    source = onnx_file(model, tmp_path / "tiny.onnx")
    final_norm = [n for n in onnx.load(source).graph.node if n.op_type == "LayerNormalization"][-1]
    explains_like_pytorch_grad_cam(model, source, final_norm.input[0], tmp_path, "blocks", prefix=0, target=2)


def test_onnx_token_model_without_a_reached_layer_is_refused_naming_candidates(tmp_path) -> None:
    """torchvision's zero head: no LayerNorm's patch tokens get a gradient, so no default is certain."""
    source = onnx_file(torchvision_vit(head=False), tmp_path / "vit.onnx")
    with pytest.raises(LayerError, match=r"no default layer for this token model: .* --layer /encoder/ln/") as e:
        export_onnx_file(source, None, None, (32, 32), **QUIET)
    assert "\n" not in str(e.value) and "--layer /encoder/layers/encoder_layer_1/ln_1/" in str(e.value)

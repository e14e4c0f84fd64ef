"""The newer rules on graphs as the two PyTorch exporters write them: tiny models exported end to end with the
export's own float64 verification against ``torch.autograd`` (it raises when the gradient is off by > 1e-4).

TorchScript at opset 20 and dynamo at opset 23 (where it emits ``GroupNormalization``, ``Gelu`` … as single ops
instead of decompositions). Each case also checks that the op it is about reached the ONNX graph.
"""

import pytest
import torch
import torch.nn.functional as F
from onnxcam_export.api import export_model
from torch import nn


class Decoder(nn.Module):
    """U-Net-style upsampling: ConvTranspose2d variants, GroupNorm, GELU, Mish, CELU, LPPool2d."""

    def __init__(self, exporter: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.up = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.up2 = nn.ConvTranspose2d(8, 6, 4, stride=2, padding=1, dilation=1)
        self.norm = nn.GroupNorm(2, 6)
        self.pool = nn.LPPool2d(2, 2)
        self.head = nn.Conv2d(6, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.up(self.enc(x)), approximate="tanh")
        y = F.celu(F.mish(self.norm(self.up2(y))), 0.7)
        return self.head(F.gelu(self.pool(y))).mean((2, 3))


class Attention(nn.Module):
    """Einsum and fused (``scaled_dot_product_attention``) attention over feature-map tokens, RMSNorm, softsign and
    shrink activations, gather, cumsum, prod and top-k."""

    def __init__(self, exporter: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.qkv = nn.Conv2d(8, 24, 1)
        # the TorchScript exporter has no rms_norm; LayerNorm stands in
        self.norm = nn.RMSNorm(8) if exporter == "dynamo" else nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.enc(x)
        n, c, h, w = f.shape
        q, k, v = self.qkv(f).reshape(n, 3, 2, c // 2, h * w).unbind(1)  # [n, heads, d, tokens]
        attention = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) * 0.5, -1)
        mixed = torch.einsum("bhij,bhdj->bhid", attention, v)
        fused = F.scaled_dot_product_attention(*(t.transpose(2, 3) for t in (q, k, v)))  # [n, heads, tokens, d]
        mixed = (mixed + fused).reshape(n, h * w, c)
        tokens = F.softshrink(F.softsign(self.norm(mixed)), 0.1) + F.hardshrink(mixed, 0.2)
        picked = torch.gather(tokens, 1, torch.arange(h * w - 1, -1, -1).repeat(n, c, 1).transpose(1, 2))
        running = picked.cumsum(1) + torch.prod(torch.sigmoid(tokens[:, :3]), 1, keepdim=True)
        return self.fc(running.mean(1) + torch.topk(tokens, 3, dim=1).values.sum(1))


class Sampler(nn.Module):
    """Spatial-transformer warps (affine_grid from the features, grid_sample bilinear and nearest) and trigonometric
    activations."""

    def __init__(self, exporter: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 6, 3, 2, 1), nn.ReLU())
        theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.1, 0.8, 0.05]]])
        self.register_buffer("grid", F.affine_grid(theta, [1, 6, 7, 9], align_corners=False))
        self.fc = nn.Linear(12, 3)
        self.localize = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.enc(x)
        grid = self.grid.expand(f.shape[0], -1, -1, -1)
        theta = torch.eye(2, 3) + 0.1 * torch.tanh(self.localize(f.mean((2, 3)))).reshape(-1, 2, 3)
        learned = F.affine_grid(theta, [f.shape[0], 6, 7, 9], align_corners=False)  # the grid depends on the input
        a = F.grid_sample(f, learned, align_corners=False)
        b = F.grid_sample(torch.sin(f), grid, mode="nearest", padding_mode="border", align_corners=True)
        return self.fc(torch.cat([torch.atan(a), b], 1).amax((2, 3)))


CASES = {
    "decoder": (
        Decoder,
        {"ConvTranspose", "Celu", "Gelu", "Sign"},
        {"ConvTranspose", "Celu", "Mish", "GroupNormalization", "Gelu", "Sign"},
    ),
    "attention": (
        Attention,
        {"Einsum", "GatherElements", "CumSum", "ReduceProd", "TopK"},
        {"Einsum", "GatherElements", "CumSum", "ReduceProd", "RMSNormalization", "Attention", "TopK"},
    ),
    "sampler": (Sampler, {"GridSample", "AffineGrid", "Sin", "Atan"}, {"GridSample", "Sin", "Atan"}),
}


@pytest.mark.parametrize("exporter", ["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)])
@pytest.mark.parametrize("case", list(CASES))
def test_exported_model_verifies(case: str, exporter: str) -> None:
    build, torchscript_ops, dynamo_ops = CASES[case]
    torch.manual_seed(0)
    opset = 20 if exporter == "torchscript" else 23
    explainer, report = export_model(
        build(exporter),
        None,
        ["enc"],
        (16, 20),
        exporter=exporter,
        opset=opset,
        heads=False,
        input_gradients=(),
        log=print,
    )
    ops = {node.op_type for node in explainer.graph.node}
    assert (torchscript_ops if exporter == "torchscript" else dynamo_ops) <= ops
    assert report is not None and report.worst <= 1e-4

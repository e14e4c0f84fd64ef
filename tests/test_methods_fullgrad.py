"""FullGrad through an explainer graph exported with ``bias_gradients=True`` against pytorch-grad-cam 1.5.x
``FullGrad`` on the same module, and its raw terms against ``torch.autograd``: a small CNN with a convolution with its
own bias, convolutions whose batch norm the export folds into them, and a batch norm after a ReLU that stays a
``BatchNormalization`` node (random statistics). Tolerances: 1e-4 absolute on the final [0, 1] maps; each
``bias_gradient:*`` output 1e-5 relative to its peak (float32 graph vs float64 autograd).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from method_cases import explain, randomize_batch_norm, relative_error
from onnxcam_export.api import export_model
from pytorch_grad_cam import FullGrad
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torch_reference import fullgrad_terms

from onnxcam import contract
from onnxcam.explainer import Explainer

MAP_TOL = 1e-4
TERM_TOL = 1e-5
TARGETS = [3, 5]


class BiasNet(nn.Module):
    """conv-BN-ReLU, conv(bias)-ReLU, conv-BN-ReLU, BN, global average pooling, linear; 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.BatchNorm2d(16),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def biasnet(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = randomize_batch_norm(BiasNet()).eval()
    path = tmp_path_factory.mktemp("biasnet") / "biasnet.onnx"
    export_model(
        model, path, ["body.7"], (32, 32), exporter="torchscript", input_gradients=(), log=lambda _: None,
        bias_gradients=True,
    )  # fmt: skip
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return model, path, x


def test_fullgrad_matches_pytorch_grad_cam(biasnet) -> None:
    model, path, x = biasnet
    explainer = Explainer(path, provider="cpu", threads=2)
    assert len(explainer.metadata.bias_gradients) == 4  # 3 convolutions (2 with a folded batch norm) + 1 batch norm
    with FullGrad(model=model, target_layers=[]) as cam:
        reference = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in TARGETS])
    ours, _, _ = explain(explainer, x, TARGETS, "fullgrad")
    assert np.abs(ours - reference).max() <= MAP_TOL


def test_bias_gradients_are_torch_autograd(biasnet) -> None:
    """``bias_gradient:input`` is ``x ⊙ ∂y/∂x`` and ``bias_gradient:<i>`` is ``b ⊙ ∂y/∂z`` at the outputs ``z`` of
    body.1 and body.6 (batch norms folded into the bias-free convolutions before them: ``b = β − γ·μ/√(σ² + ε)``),
    body.3 (a convolution's own bias) and body.8 (a batch norm left as a node), in graph order."""
    model, path, x = biasnet
    seed = np.eye(10, dtype=np.float32)[TARGETS]
    ours = Explainer(path, provider="cpu", threads=2).bias_gradients(x, seed)
    reference = fullgrad_terms(model, x, seed, ["body.1", "body.3", "body.6", "body.8"])
    assert len(ours) == len(reference) == 5
    for term, (got, want) in enumerate(zip(ours, reference, strict=True)):
        assert got.shape == want.shape and np.abs(want).max() > 0, term
        assert relative_error(got, want) <= TERM_TOL, (term, relative_error(got, want))


def test_fullgrad_outputs_are_optional(tmp_path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "plain.onnx"
    export_model(BiasNet().eval(), path, ["body.7"], (32, 32), exporter="torchscript", verify=False, log=lambda _: None)
    graph = onnx.load(str(path))
    assert not [o.name for o in graph.graph.output if o.name.startswith(contract.BIAS_GRADIENT_PREFIX)]
    assert contract.META_BIAS_GRADIENTS not in {p.key for p in graph.metadata_props}
    explainer = Explainer(path, provider="cpu")
    with pytest.raises(ValueError, match="re-export it with --bias-gradients"):
        explainer.explain_arrays(np.zeros((1, 3, 32, 32), np.float32), 0, ["fullgrad"])

"""Export refusals in one line. An exporter that refuses the model (TorchScript: adaptive average pooling to a size
that does not divide the map, AlexNet below 224 px) names the exporter, the size and the way out, not a traceback; the
other exporter gives the exact graph (verified against float64 autograd by the export itself). A zero head (every
gradient 0) is said to be one when the default layer is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from onnxcam_export.api import export_model
from onnxcam_export.torch_capture import TracingError
from torch import nn


class UpPool(nn.Module):
    """A 1×1 map pooled *up* to 3×3 (AlexNet's ``avgpool`` on a small input), then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.fc = nn.Linear(36, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


def test_exporter_refusal_is_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(TracingError) as refused:
        export_model(UpPool().eval(), tmp_path / "t.onnx", ["body.1"], (16, 16), exporter="torchscript", log=print)
    message = str(refused.value)
    assert "\n" not in message and "torchscript exporter cannot export this model at 16x16" in message, message
    assert message.endswith("try --exporter dynamo or another --input-size"), message
    _, report = export_model(UpPool().eval(), tmp_path / "d.onnx", ["body.1"], (16, 16), exporter="dynamo", log=print)
    assert report is not None and report.worst < 1e-6


def test_zero_initialised_head_refuses_the_default_layer_in_one_line(tmp_path: Path) -> None:
    """torchvision's untrained ViT has a zero head: every gradient is 0, so no layer is reached by it; the refusal
    says so (it used to say that no module produces a feature map)."""
    from onnxcam_export.layers import LayerError
    from small_models import GapNet

    model = GapNet().eval()
    nn.init.zeros_(model.fc.weight)
    nn.init.zeros_(model.fc.bias)
    with pytest.raises(LayerError, match="the scores' gradient is 0 at every layer") as refused:
        export_model(model, tmp_path / "z.onnx", None, (32, 32), exporter="torchscript", log=print)
    assert "\n" not in str(refused.value)


class FoldsBatch(nn.Module):
    """A batch-1 model that folds the batch into a reshape (``[1, 4, 4, 4] → [4, 16]``), as Swin's window partition
    does in a fixed-batch export."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(4, 16).sum(1)).reshape(1, 5)


def test_fixed_batch_file_that_folds_its_batch_keeps_it(tmp_path: Path) -> None:
    """No longer refused: the explainer graph keeps the file's batch of 1 (``tests/test_fixed_batch.py`` checks the
    gradients and maps)."""
    from onnxcam_export.api import export_onnx_file

    from onnxcam.explainer import Explainer

    source = tmp_path / "fixed.onnx"
    torch.onnx.export(FoldsBatch().eval(), (torch.randn(1, 3, 8, 8),), str(source), opset_version=17, dynamo=False)
    logs: list[str] = []
    _, report = export_onnx_file(source, tmp_path / "e.onnx", None, (8, 8), log=logs.append)
    assert report is not None and report.worst < 1e-4
    assert any("fixed batch of 1 that its graph folds" in line for line in logs), logs
    assert Explainer(tmp_path / "e.onnx", provider="cpu").metadata.fixed_batch == 1


class Attends(nn.Module):
    """Conv patches, eval-mode ``MultiheadAttention(batch_first=True)`` without weights (torchvision's ViT block: its
    fused fast path under ``no_grad`` is an op the TorchScript exporter cannot write), mean, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 8, 8)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.fc(self.attention(tokens, tokens, tokens, need_weights=False)[0].mean(1))


def test_torchscript_traces_eval_mode_attention() -> None:
    """The TorchScript trace of eval-mode attention is written (it raised on the fused op) and computes the model's
    scores and tapped map (onnxruntime vs PyTorch, float32)."""
    import onnxruntime as ort
    from onnxcam_export.torch_capture import to_onnx

    from onnxcam import contract

    torch.manual_seed(0)
    model = Attends().eval()
    graph = to_onnx(model, ["patch"], (32, 32), exporter="torchscript")
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    scores, patch = session.run([contract.SCORES, contract.activation_name("patch")], {contract.INPUT: x.numpy()})
    with torch.no_grad():
        assert abs(scores - model(x).numpy()).max() < 1e-5
        assert abs(patch - model.patch(x).numpy()).max() < 1e-5

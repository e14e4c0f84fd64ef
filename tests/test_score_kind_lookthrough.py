"""The scores kind seen through the ops after a softmax/sigmoid that only move or select values, and through a
softmax/sigmoid written out (Exp/ReduceSum/Div, 1/(1+Exp(−x))), on ONNX files traced from small PyTorch heads.

For each head: the kind export reports; the probability onnxcam reports vs the original file's own output
(onnxruntime, ≤ 1e-6); the explained layer gradient vs float64 ``torch.autograd`` of the quantity the kind names
(the logit of the class, laid out as the output; ≤ 1e-5 relative). Heads no kind fits exactly are refused in one
line naming the node, and export with ``--scores probabilities`` as the way out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.errors import ExportError
from torch import nn

from onnxcam.explainer import Explainer

LAYER = "/features/features.3/Relu_output_0"
CLASSES = 11
PERM = [3, 0, 10, 1, 2, 9, 4, 8, 5, 7, 6]
Head = Callable[[torch.Tensor], torch.Tensor]


def written_softmax(z: torch.Tensor, shift: bool) -> torch.Tensor:
    e = torch.exp(z - z.max(1, keepdim=True).values if shift else z)
    return e / e.sum(1, keepdim=True)


class Net(nn.Module):
    def __init__(self, head: Head) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, CLASSES)
        with torch.no_grad():
            self.fc.weight.mul_(20)  # confident: a probability taken for a logit would show
        self.head = head

    def logits(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.logits(self.features(x)))


X = np.random.default_rng(0).uniform(-2, 2, size=(3, 3, 32, 32)).astype(np.float32)

# head, the kind export detects, the explained scores as a function of the logits z, probability of the output
DETECTED: dict[str, tuple[Head, str, Head, Callable[[np.ndarray], np.ndarray] | None]] = {
    "softmax-unsqueeze-flatten": (lambda z: torch.flatten(z.softmax(1)[:, :, None], 1), "logits", lambda z: z, None),
    "softmax-transpose": (
        lambda z: z[:, None, :].softmax(-1).transpose(1, 2).flatten(1),
        "logits",
        lambda z: z,
        None,
    ),
    "softmax-permuted": (lambda z: z.softmax(1)[:, PERM], "logits", lambda z: z[:, PERM], None),
    "exp-reducesum-div": (lambda z: written_softmax(z, False), "logits", lambda z: z, None),
    "exp-max-reducesum-div": (lambda z: written_softmax(z, True), "logits", lambda z: z, None),
    "log-softmax-written": (lambda z: torch.log(z.softmax(1)), "logits", lambda z: z, np.exp),
    "sigmoid-slice": (lambda z: torch.sigmoid(z)[:, 1:], "sigmoid", lambda z: z[:, 1:], None),
    "sigmoid-written": (lambda z: 1 / (1 + torch.exp(-z)), "sigmoid", lambda z: z, None),
    "sigmoid-div": (lambda z: torch.tensor(1.0) / (torch.exp(z * -1) + 1), "sigmoid", lambda z: z, None),
    "exp-reciprocal-mul": (
        lambda z: torch.exp(z) * (1 / torch.exp(z).sum(1, keepdim=True)),
        "logits",
        lambda z: z,
        None,
    ),
}


def onnx_file(tmp_path: Path, head: Head) -> tuple[Path, Net]:
    model = Net(head).eval()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.zeros(1, 3, 32, 32), path, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "n"}}
        )
    return path, model


def exported(tmp_path: Path, head: Head, kind: str | None = None) -> tuple[Explainer, Net, np.ndarray, str]:
    """The explainer of ``head``'s ONNX file, the model, the file's own output on :data:`X` and the kind line."""
    src, model = onnx_file(tmp_path, head)
    lines: list[str] = []
    export_onnx_file(src, tmp_path / "ex.onnx", [LAYER], scores_kind=kind, log=lines.append)
    output = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    return Explainer(tmp_path / "ex.onnx", provider="cpu"), model, output, next(s for s in lines if "scores:" in s)


def reference_gradient(model: Net, quantity: Head, classes: np.ndarray) -> np.ndarray:
    """float64 ``∂ Σ_n quantity(z)[n, c_n] / ∂A`` of the tapped layer ``A``."""
    m = Net(model.head).double().eval()
    m.load_state_dict(model.state_dict())
    a = m.features(torch.from_numpy(X).double()).detach().requires_grad_(True)
    picked = quantity(m.logits(a))[torch.arange(len(X)), torch.from_numpy(classes)].sum()
    return torch.autograd.grad(picked, a)[0].numpy()


def assert_explains(explainer: Explainer, model: Net, probability: np.ndarray, quantity: Head) -> None:
    """Top-1 and its probability as the file says; the layer gradient of ``quantity`` as autograd says."""
    results = explainer.explain_arrays(X, None, ["gradcam"])
    top1 = probability.argmax(1)
    assert [r.class_index for r in results] == list(top1)
    assert max(abs(r.probability - probability[n, r.class_index]) for n, r in enumerate(results)) <= 1e-6
    ours = explainer.run(X, top1.astype(np.int64)).gradients[LAYER]
    ref = reference_gradient(model, quantity, top1)
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("name", list(DETECTED))
def test_kind_seen_through(tmp_path: Path, name: str) -> None:
    head, kind, quantity, to_probability = DETECTED[name]
    explainer, model, output, line = exported(tmp_path, head)
    assert line.startswith(f"scores: {kind} (the trailing ")
    assert explainer.scores_kind == kind
    assert_explains(explainer, model, to_probability(output) if to_probability else output, quantity)


REFUSED = {
    "softmax-slice": (lambda z: z.softmax(1)[:, 1:], r"keeps 10 of its 11 classes \(1…10\), at the Slice '/Slice'"),
    "softmax-gather-some": (lambda z: z.softmax(1)[:, [0, 3, 5]], r"gathers 3 of 11 classes, at the Gather"),
    "softmax-temperature": (lambda z: z.softmax(1) * 2, r"from the Softmax '/Softmax' through the Mul '/Mul'"),
    "softmax-averaged": (lambda z: (z.softmax(1) + (z / 2).softmax(1)) / 2, r"Softmax '/Softmax(_1)?' through the Div"),
    "sigmoid-heads-joined": (
        lambda z: torch.cat([torch.sigmoid(z[:, :5]), torch.sigmoid(z[:, 5:])], 1),
        r"from the Sigmoid '/Sigmoid(_1)?' through the Concat '/Concat'",
    ),
    "softmax-topk": (lambda z: torch.topk(z.softmax(1), 5).values, r"from the Softmax '/Softmax' through the TopK"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_no_exact_kind_refused_and_probabilities_declared(tmp_path: Path, name: str) -> None:
    head, why = REFUSED[name]
    src, _ = onnx_file(tmp_path, head)
    with pytest.raises(ExportError, match=why) as refused:
        export_onnx_file(src, None, [LAYER], log=lambda _: None)
    assert "\n" not in str(refused.value) and "--scores probabilities" in str(refused.value)
    explainer, model, output, line = exported(tmp_path, head, "probabilities")
    assert line == "scores: probabilities (declared)"
    if name != "softmax-temperature":  # the declared way out explains the output's probabilities as they are
        assert_explains(explainer, model, output, lambda z: head(z))


def test_softmax_over_another_axis_refused(tmp_path: Path) -> None:
    src, _ = onnx_file(tmp_path, lambda z: z.softmax(0))  # over the batch
    with pytest.raises(ExportError, match=r"Softmax '/Softmax' whole \(it is axis 0 of the output, not the class axis"):
        export_onnx_file(src, None, [LAYER], log=lambda _: None)


@pytest.mark.parametrize("name", ["sigmoid-slice", "softmax-permuted", "exp-max-reducesum-div"])
def test_pytorch_model_reference_takes_the_same_logits(tmp_path: Path, name: str) -> None:
    """Exported from PyTorch (dynamo: ``[:, PERM]`` becomes Transpose/GatherND/Transpose): verified against autograd of
    the logits moved as the output is, or, for a written-out softmax, by float64 finite differences."""
    head, kind, quantity, _ = DETECTED[name]
    lines: list[str] = []
    model = Net(head).eval()
    _, report = export_model(model, tmp_path / "ex.onnx", ["features.3"], (32, 32), log=lines.append)
    assert report is not None and report.worst <= 1e-5
    assert any(line.startswith(f"scores: {kind} (the trailing ") for line in lines)
    assert any(line.startswith("verified against float64 finite differences") for line in lines) == ("exp" in name)
    with torch.no_grad():
        ref = quantity(model.logits(model.features(torch.from_numpy(X)))).numpy()
    scores = Explainer(tmp_path / "ex.onnx", provider="cpu").scores(X)
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("name", ["softmax-transpose", "sigmoid-slice", "exp-max-reducesum-div"])
def test_int8_export_re_applies_the_moving_ops(tmp_path: Path, name: str) -> None:
    """Quantized to int8 QDQ (the logits dequantized, then moved): the kind is still seen, the graph verifies against
    the straight-through estimator, and onnxruntime builds its session (its QDQ propagation through a Transpose read
    inside the backward's ``If`` aborted the process before the Flatten guard of ``reapply``)."""
    head, kind, _, _ = DETECTED[name]
    src, _ = onnx_file(tmp_path, head)
    calibration = np.random.default_rng(1).uniform(-2, 2, size=(8, 3, 32, 32)).astype(np.float32)
    lines: list[str] = []
    out = tmp_path / "int8.onnx"
    _, report = export_onnx_file(src, out, [LAYER], precision="int8", calibration=calibration, log=lines.append)
    assert report is not None and any(line.startswith(f"scores: {kind} (the trailing ") for line in lines)
    explainer = Explainer(out, provider="cpu")
    assert explainer.scores(X).shape == (len(X), CLASSES - (name == "sigmoid-slice"))

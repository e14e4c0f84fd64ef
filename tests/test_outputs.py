"""Models with several outputs: the scores are chosen (``scores_from`` / ``--scores-from``) or the export is refused in
one line; the file is wired to the chosen tensor and verified against that same tensor. Labels are validated.

References: the PyTorch model's own chosen output (and autograd, through export verification), onnxruntime on the
source ONNX file.
"""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import ExportError, export_model, export_onnx_file, resolve_labels
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from onnxcam.cli import main
from onnxcam.explainer import Explainer

SIZE = (32, 32)
QUIET = {"log": lambda _: None}
Pair = namedtuple("Pair", ["embedding", "logits"])


@dataclasses.dataclass
class Heads:
    logits: torch.Tensor
    embedding: torch.Tensor


def wrap(kind: str, logits: torch.Tensor, emb: torch.Tensor):
    """The two tensors as a model might return them."""
    return {
        "tuple": lambda: (logits, emb),
        "list": lambda: [emb, logits],
        "dict": lambda: {"logits": logits, "embedding": emb},
        "namedtuple": lambda: Pair(emb, logits),
        "dataclass": lambda: Heads(logits, emb),
        "hf": lambda: ImageClassifierOutput(logits=logits),
        "tokens": lambda: (logits, emb[:, :12].reshape(-1, 3, 4)),  # [N, 5] and [N, 3, 4]: only one looks like scores
    }[kind]()


class MultiOut(nn.Module):
    """Conv body → GAP → embedding [N, 16] → logits [N, 5], returned in the container ``kind``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor):
        emb = self.features(x).mean((2, 3))
        return wrap(self.kind, self.fc(emb), emb)


def logits_of(model: MultiOut, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.fc(model.features(torch.from_numpy(x)).mean((2, 3))).numpy()


X = np.random.default_rng(1).normal(size=(2, 3, *SIZE)).astype(np.float32)


@pytest.mark.parametrize(
    ("kind", "scores_from"),
    [
        ("tuple", "0"),
        ("tuple", 0),
        ("list", "1"),
        ("dict", "logits"),
        ("namedtuple", "logits"),
        ("dataclass", "logits"),
        ("hf", None),  # one tensor in the output object: taken without asking
        ("tokens", None),  # the only [N, K] output
    ],
)
def test_scores_chosen_among_outputs(tmp_path: Path, kind: str, scores_from) -> None:
    model = MultiOut(kind).eval()
    path = tmp_path / "m.onnx"
    _, report = export_model(
        model, path, ["features.3"], SIZE, exporter="torchscript", scores_from=scores_from, **QUIET
    )
    assert report is not None and report.worst < 1e-6
    explainer = Explainer(path, provider="cpu")
    assert explainer.score_shape == (5,)
    np.testing.assert_allclose(explainer.scores(X), logits_of(model, X), atol=1e-5)
    assert explainer.graph.output("activation:features.3").shape[1:] == (16, *SIZE)


def test_dynamo_exporter_picks_the_same_output(tmp_path: Path) -> None:
    model = MultiOut("dict").eval()
    path = tmp_path / "m.onnx"
    _, report = export_model(model, path, ["features.3"], SIZE, exporter="dynamo", scores_from="logits", **QUIET)
    assert report is not None and report.worst < 1e-6
    np.testing.assert_allclose(Explainer(path, provider="cpu").scores(X), logits_of(model, X), atol=1e-5)


@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_ambiguous_outputs_are_refused_in_one_line(kind: str) -> None:
    with pytest.raises(ExportError) as error:
        export_model(MultiOut(kind).eval(), None, ["features.3"], SIZE, exporter="torchscript", **QUIET)
    message = str(error.value)
    assert "\n" not in message and "--scores-from" in message and "[N, 5]" in message and "[N, 16]" in message
    with pytest.raises(ExportError, match="--scores-from 7: no such output"):
        export_model(MultiOut(kind).eval(), None, ["features.3"], SIZE, exporter="torchscript", scores_from=7, **QUIET)


def test_cli_scores_from(tmp_path: Path) -> None:
    source = tmp_path / "netdef.py"
    source.write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom test_outputs import MultiOut\n\n"
        "def build():\n    return MultiOut('dict')\n"
    )
    out = tmp_path / "m.onnx"
    args = ["export", f"{source}:build", "--layer", "features.3", "--input-size", "32", "32", "--exporter"]
    refused = CliRunner().invoke(main, [*args, "torchscript", "-o", str(out)])
    assert refused.exit_code != 0 and "--scores-from" in refused.output and not out.exists()
    done = CliRunner().invoke(main, [*args, "torchscript", "-o", str(out), "--scores-from", "logits"])
    assert done.exit_code == 0, done.output
    info = CliRunner().invoke(main, ["info", str(out)])
    assert "activation:features.3" in info.output and "[N, 16, 32, 32]" in info.output


@pytest.fixture(scope="module")
def two_output_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("multi") / "two.onnx"
    torch.onnx.export(
        MultiOut("tuple").eval(),
        (torch.randn(1, 3, *SIZE),),
        str(path),
        input_names=["image"],
        output_names=["class_logits", "embedding"],
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.mark.parametrize("scores_from", ["class_logits", 0, "0"])
def test_multi_output_onnx_file(tmp_path: Path, two_output_onnx: Path, scores_from) -> None:
    layer = next(n.output[0] for n in onnx.load(str(two_output_onnx)).graph.node if n.op_type == "Relu")
    out = tmp_path / "e.onnx"
    _, report = export_onnx_file(two_output_onnx, out, [layer], scores_from=scores_from, **QUIET)
    assert report is not None
    source = ort.InferenceSession(str(two_output_onnx), providers=["CPUExecutionProvider"])
    expected = source.run(["class_logits"], {"image": X[:1]})[0]
    np.testing.assert_allclose(Explainer(out, provider="cpu").scores(X[:1]), expected, atol=1e-5)


def test_multi_output_onnx_file_refused_without_a_choice(two_output_onnx: Path) -> None:
    with pytest.raises(
        ExportError, match=r"the ONNX file has 2 outputs \(class_logits \[N, 5\], embedding \[N, 16\]\)"
    ):
        export_onnx_file(two_output_onnx, None, scores_from=None, **QUIET)
    with pytest.raises(ExportError, match="no such output"):
        export_onnx_file(two_output_onnx, None, scores_from="probs", **QUIET)


def test_embedding_output_as_raw_scores(tmp_path: Path, two_output_onnx: Path) -> None:
    out = tmp_path / "emb.onnx"
    layer = next(n.output[0] for n in onnx.load(str(two_output_onnx)).graph.node if n.op_type == "Relu")
    export_onnx_file(two_output_onnx, out, [layer], scores_from="embedding", scores_kind="raw", **QUIET)
    explainer = Explainer(out, provider="cpu")
    assert explainer.scores_kind == "raw" and explainer.score_shape == (16,)
    [result] = explainer.explain_arrays(X[:1], 3, ["gradcam"])
    assert np.isnan(result.probability) and result.class_index == 3


# ------------------------------------------------------------------------------------------------------------ labels


def test_label_count_must_match_the_classes() -> None:
    with pytest.raises(ExportError, match="labels: 4 given, but the model has 5 class scores"):
        export_model(
            MultiOut("hf").eval(), None, ["features.3"], SIZE, labels=list("abcd"), exporter="torchscript", **QUIET
        )


def test_blank_label_line_is_an_error(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n\nbird\n")
    with pytest.raises(ExportError, match="line 3 is blank"):
        resolve_labels(str(labels))
    labels.write_text("cat\n dog \nbird\n\n")  # trailing blank lines shift nothing
    assert resolve_labels(str(labels)) == ("cat", "dog", "bird")

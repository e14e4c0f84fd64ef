"""Defects found by trying today's new work as a demanding user would (seed-path verification, models over 2 GiB,
export memory); each test failed before its fix.

The large path runs on small models with :data:`large_protos.LIMIT` patched to 0, as ``tests/test_large_protos.py``
does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export import large_protos
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.autodiff.registry import RULES
from onnxcam_export.errors import ExportError
from onnxcam_export.torch_capture import to_onnx
from onnxcam_export.verify import SEED_PATH, NonFiniteGradient, VerificationError
from test_large_protos import SIZE, X, gapnet, shrink
from test_seed_path import TinySegmenter
from torch import nn

from onnxcam import contract
from onnxcam.cli import main

QUIET = {"heads": False, "log": lambda _: None}


@pytest.fixture(scope="module")
def forward() -> onnx.ModelProto:
    """GapNet's traced forward (``scores``, ``activation:body.3``)."""
    return to_onnx(gapnet(), ["body.3"], SIZE, exporter="torchscript")


def test_small_graph_written_over_a_large_pair_removes_its_stale_weights(
    forward: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explainer pair ``m.onnx`` + ``m.onnx.data`` overwritten by a graph under the limit: the single file alone is
    left (the old weights belong to no graph any more). Data the old file did not read, or the data of a file that
    was no explainer (a source exported over in place: its weights are the user's), is kept."""
    explainer = export_model(gapnet(), None, ["body.3"], SIZE, exporter="torchscript", **QUIET)[0]
    path = tmp_path / "m.onnx"
    with monkeypatch.context() as large:
        shrink(large)
        large_protos.save(explainer, path)
    assert large_protos.data_path(path).is_file()
    large_protos.save(explainer, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    expected = ort.InferenceSession(explainer.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {contract.INPUT: X, contract.TARGET: np.array([3, -1])}
    for a, b in zip(ours.run(None, feeds), expected.run(None, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    foreign = large_protos.data_path(path)
    foreign.write_bytes(b"someone else's weights")  # not read by the single file at path
    large_protos.save(explainer, path)
    assert foreign.read_bytes() == b"someone else's weights"
    source = tmp_path / "source.onnx"
    with monkeypatch.context() as large:
        shrink(large)
        large_protos.save(forward, source)  # a model with external data, not an explainer
    large_protos.save(explainer, source)
    assert large_protos.data_path(source).is_file()


@pytest.mark.parametrize("large", [False, True])
def test_unwritable_output_is_refused_in_one_line(
    forward: onnx.ModelProto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, large: bool
) -> None:
    """An output under a regular file (or any path the OS refuses) is an ExportError naming the path, no traceback."""
    if large:
        shrink(monkeypatch)
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    (tmp_path / "folder").mkdir()
    for output in (blocker / "m.onnx", tmp_path / "folder"):
        with pytest.raises(ExportError, match="cannot write") as refused:
            large_protos.save(forward, output)
        message = str(refused.value)
        assert "\n" not in message and str(output) in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]  # no temporary file left


def test_cli_export_to_an_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    source = tmp_path / "gapnet.onnx"
    large_protos.save(to_onnx(gapnet(), [], SIZE, exporter="torchscript"), source)
    result = CliRunner().invoke(
        main, ["export", str(source), "-o", str(blocker / "m.onnx"), "--input-size", "32", "32", "--no-verify"]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # click's exit
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot write"), result.output


class SqrtNet(nn.Module):
    """conv → ReLU → √ → 1×1 conv to 4 classes (dense ``[N, 4, H, W]``): ``∂y/∂A = w / (2√A)`` is infinite wherever
    the ReLU output ``A`` is 0 (most images, most maps): no finite Grad-CAM exists at that layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x).sqrt())


class NanForSomeImages(nn.Module):
    """Dense ``[N, 4, H, W]`` scores times ``√mean(x)``: NaN scores (and gradients) for an image of negative mean,
    about half the random verification images."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x)) * x.mean((1, 2, 3), keepdim=True).sqrt()


def _onnx_file(model: nn.Module, path: Path) -> Path:
    torch.onnx.export(model, torch.randn(1, 3, *SIZE), path, dynamo=False, opset_version=18)
    return path


@pytest.mark.parametrize(("model", "scores"), [(SqrtNet, False), (NanForSomeImages, True)])
def test_non_finite_gradient_is_refused_as_such_from_both_sources(
    tmp_path: Path, model: type[nn.Module], scores: bool
) -> None:
    """Graph and reference agree (both NaN/inf at the same entries): the torch path used to pass such a file (every
    Grad-CAM of it NaN), the ONNX path refused it as a wrong graph blaming a correct rule. Both now refuse it as a
    model without a finite derivative, in one line naming the output and the cause."""
    torch.manual_seed(0)
    net = model().eval()
    with pytest.raises(NonFiniteGradient) as from_torch:
        export_model(net, None, ["body.1"], SIZE, exporter="torchscript", **QUIET)
    onnx_file = _onnx_file(net, tmp_path / "m.onnx")
    with pytest.raises(NonFiniteGradient) as from_onnx:
        export_onnx_file(onnx_file, None, ["/body/body.1/Relu_output_0"], input_size=SIZE, **QUIET)
    for refused in (from_torch, from_onnx):
        message = str(refused.value)
        assert "\n" not in message and "gradient:" in message and "NaN or infinite for" in message, message
        assert ("scores are NaN" in message) == scores, message
        assert "explainer graph is wrong" not in message and "@rule" not in message, message


def test_a_rule_emitting_nan_is_still_a_wrong_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reference finite, the graph NaN (a ReLU rule ``ḡ · (y / y)``: NaN where ``y = 0``): a wrong graph, the
    rule named — not a model without a finite derivative."""

    def relu_nan(ctx):
        y = ctx.output()
        return [ctx.emit("Mul", ctx.grad(), ctx.emit("Div", y, y))]

    monkeypatch.setitem(RULES, "Relu", relu_nan)
    torch.manual_seed(0)
    net = TinySegmenter().eval()
    with pytest.raises(VerificationError) as from_torch:
        export_model(net, None, ["body.1"], SIZE, exporter="torchscript", input_gradients=("standard",), **QUIET)
    onnx_file = _onnx_file(net, tmp_path / "m.onnx")
    with pytest.raises(VerificationError) as from_onnx:
        export_onnx_file(onnx_file, None, ["/body/body.1/Relu_output_0"], input_size=SIZE, **QUIET)
    for refused in (from_torch, from_onnx):
        assert not isinstance(refused.value, NonFiniteGradient), str(refused.value)
        assert "explainer graph is wrong" in str(refused.value) and "(Relu," in str(refused.value), str(refused.value)


def test_float16_dense_output_with_an_upsampling_verifies_on_the_seed_path() -> None:
    """A ``model.half()`` segmenter whose logits are upsampled by ``F.interpolate``: the float16 conversion keeps
    ``Resize`` in float32 and feeds it ``Cast(scales)`` of a float16 constant, which the ``Resize`` rule used to refuse
    ("the scales input must be a constant"). It exports as a float16 graph and verifies on both paths (finite
    differences of the deployed graph, as README's *Converting at export* says)."""
    torch.manual_seed(0)
    _, report = export_model(TinySegmenter().eval().half(), None, ["body.3"], SIZE, exporter="torchscript", **QUIET)
    seed = {k: max(v) for k, v in report.errors.items() if k.endswith(SEED_PATH)}
    assert set(seed) == {"gradient:body.3" + SEED_PATH}, report.errors
    assert report.worst < 1e-4, report.summary()


def test_onnx_source_whose_external_data_is_missing_is_named_as_such(tmp_path: Path) -> None:
    """An ONNX source copied without its weights file (``all_tensors_to_one_file=False``: one file per tensor) was
    refused as "not an ONNX model (ValidationError)"; the refusal now names the missing external data."""
    source = tmp_path / "m.onnx"
    onnx.save_model(
        to_onnx(gapnet(), [], SIZE, exporter="torchscript"),
        str(source),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
    )
    export_onnx_file(source, None, input_size=SIZE, **QUIET)  # complete: exports
    weight = next(p for p in tmp_path.iterdir() if p.name != "m.onnx")
    weight.unlink()
    with pytest.raises(ExportError) as refused:
        export_onnx_file(source, None, input_size=SIZE, **QUIET)
    message = str(refused.value)
    assert "\n" not in message and "not an ONNX model" not in message, message
    assert "external data" in message and weight.name in message, message


def test_unwritable_output_is_refused_before_the_export_works(tmp_path: Path) -> None:
    """A 2.5 GB model takes minutes and ~30 GB to export: an output the system refuses is reported first."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for export in (
        lambda out, log: export_model(gapnet(), out, ["body.3"], SIZE, exporter="torchscript", log=log),
        lambda out, log: export_onnx_file(_onnx_file(gapnet(), tmp_path / "g.onnx"), out, input_size=SIZE, log=log),
    ):
        lines: list[str] = []
        with pytest.raises(ExportError, match="cannot write"):
            export(blocker / "m.onnx", lines.append)
        assert not lines, lines  # nothing traced, built or verified


def test_default_layer_of_a_dense_pytorch_model_is_not_its_class_maps() -> None:
    """Without ``--layer``, a segmenter's default was its last spatial map: the 1×1 conv whose K channels *are* the
    class maps (deeplabv3's ``classifier.4``), where Grad-CAM only reproduces the logits. As for an ONNX file (README
    *Export*, dense outputs), the default is the last map before the class maps."""
    lines: list[str] = []
    torch.manual_seed(0)
    explainer, _ = export_model(
        TinySegmenter().eval(), None, None, SIZE, exporter="torchscript", heads=False, log=lines.append
    )
    chosen = next(line for line in lines if line.startswith("no --layer given"))
    assert "'classifier'" not in chosen and "class maps" in chosen, chosen
    metadata = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props})
    activation = next(o for o in explainer.graph.output if o.name == contract.activation_name(metadata.layers[0]))
    assert activation.type.tensor_type.shape.dim[1].dim_value == 8  # body's 8 channels, not the 4 classes

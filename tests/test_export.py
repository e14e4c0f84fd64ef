"""Export stage end to end: contract, metadata, several layers, foreign ONNX files, errors, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from gradcheck import relative_error
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.assemble import OutputError
from onnxcam_export.autodiff.context import GradientError
from onnxcam_export.layers import LayerError
from onnxcam_export.onnx_prep import OnnxSourceError
from onnxcam_export.sources import load_torchvision
from torch import nn
from torch_reference import reference

from onnxcam import contract
from onnxcam.cli import main

QUIET = {"log": lambda _: None}


class TinyNet(nn.Module):
    """Conv → BN → ReLU → MaxPool → Conv → ReLU → GAP → Linear: a miniature classifier with 10 classes."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class ConvHead(TinyNet):
    """Same body, but a 1×1-conv classifier whose output stays ``[N, K, 1, 1]``, followed by a softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.pool(self.features(x))), dim=1)


def tiny(cls: type[nn.Module] = TinyNet) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # non-trivial BN statistics
        bn = model.features[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def outputs(model: onnx.ModelProto, x: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    s = session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {"input": x, "target": target}), strict=True))


def test_exported_file_passes_checker_and_carries_metadata(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    labels = [f"class {i}" for i in range(10)]
    _, report = export_model(
        tiny(),
        path,
        ["features.5"],
        input_size=(32, 40),
        labels=labels,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        input_gradients=contract.RELU_RULES,
        **QUIET,
    )
    assert report is not None and report.worst < 1e-4
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    meta = contract.Metadata.from_props(props)
    assert meta.layers == ("features.5",)
    assert meta.labels == tuple(labels)
    assert meta.preprocess.input_size == (32, 40)
    assert meta.preprocess.mean == (0.5, 0.5, 0.5) and meta.preprocess.std == (0.25, 0.25, 0.25)
    assert "torch" in meta.exporter and meta.version == contract.CONTRACT_VERSION
    assert meta.input_gradients == contract.RELU_RULES and meta.heads == ("features.5",)
    switches = [
        "compute:gradients",
        "compute:gradient:input",
        "compute:gradient:input:guided",
        "compute:gradient:input:deconvnet",
        "compute:head_scores:features.5",
    ]
    optional = ["seed", "head:features.5", *switches]
    assert [i.name for i in model.graph.input] == ["input", "target", *optional]
    assert {t.name for t in model.graph.initializer} >= set(optional), "optional inputs have defaults"
    assert [o.name for o in model.graph.output] == [
        "scores",
        "target_used",
        "activation:features.5",
        "gradient:features.5",
        "gradient:input",
        "gradient:input:guided",
        "gradient:input:deconvnet",
        "head_scores:features.5",
    ]
    assert not list(tmp_path.glob(".*tmp")), "no temporary file left behind"


def test_resnet50_three_layers_in_one_file() -> None:
    layers = ["layer2", "layer3", "layer4"]
    model = load_torchvision("resnet50").eval()
    explainer, report = export_model(model, None, layers, exporter="torchscript", **QUIET)
    assert report is not None and report.worst <= 1e-3
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    target = np.array([-1, 5], np.int64)
    ours = outputs(explainer, x.numpy(), target)
    ref = reference(model, layers, x, target)
    for layer in layers:
        assert ours[f"gradient:{layer}"].shape == ref[f"gradient:{layer}"].shape
        assert relative_error(ours[f"activation:{layer}"], ref[f"activation:{layer}"]) <= 1e-4
    assert relative_error(ours["gradient:layer4"], ref["gradient:layer4"]) <= 1e-4


def test_default_layer_is_last_feature_map_before_pooling() -> None:
    messages: list[str] = []
    explainer, _ = export_model(load_torchvision("resnet18"), None, verify=False, log=messages.append)
    assert contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props}).layers == ("layer4",)
    assert any("layer4" in m for m in messages)


def test_unknown_layer_lists_nearest_names() -> None:
    with pytest.raises(LayerError, match=r"unknown layer 'layer5'; nearest: .*layer4"):
        export_model(load_torchvision("resnet18"), None, ["layer5"], verify=False, **QUIET)


def test_op_without_rule_names_op_node_and_where_to_add_it() -> None:
    class Rounding(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(torch.round(self.features(x))), 1))

    with pytest.raises(GradientError) as info:
        export_model(tiny(Rounding), None, ["features.5"], input_size=(16, 16), verify=False, **QUIET)
    message = str(info.value)
    assert "'Round'" in message and "node" in message and "@rule('Round')" in message
    assert "\n" not in message


def test_output_that_is_neither_classes_nor_dense_is_refused() -> None:
    class Sequence(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(x).flatten(2)  # [N, 16, H·W]

    with pytest.raises(OutputError, match=r"\[N, classes\]"):
        export_model(tiny(Sequence), None, ["features.2"], input_size=(16, 16), verify=False, **QUIET)


def torchscript_file(model: nn.Module, path: Path, opset: int, batch: int = 1, legacy: bool = False) -> Path:
    """What third-party tools ship: fixed batch, old opset, optionally weights listed as graph inputs."""
    torch.onnx.export(
        model,
        (torch.randn(batch, 3, 16, 16),),
        str(path),
        input_names=["data"],
        output_names=["prob"],
        opset_version=opset,
        dynamo=False,
        keep_initializers_as_inputs=legacy,
    )
    return path


@pytest.mark.parametrize(
    ("cls", "opset", "legacy"),
    [(TinyNet, 11, True), (TinyNet, 17, False), (ConvHead, 13, True)],
    ids=["opset11-legacy-ir", "opset17", "conv-head-softmax"],
)
def test_foreign_onnx_file(tmp_path: Path, cls: type[nn.Module], opset: int, legacy: bool) -> None:
    model = tiny(cls)
    source = torchscript_file(model, tmp_path / "foreign.onnx", opset, legacy=legacy)
    layer = next(n.output[0] for n in onnx.load(str(source)).graph.node if n.op_type == "Relu")
    explainer, report = export_onnx_file(source, tmp_path / "explainer.onnx", [layer], **QUIET)
    assert report is not None and report.worst <= 1e-2
    onnx.checker.check_model(explainer, full_check=True)

    # batch 4 although the file was exported for batch 1; gradients vs autograd of the logits (softmax stripped)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    target = np.array([-1, 0, 9, 3], np.int64)
    ours = outputs(explainer, x.numpy(), target)
    module_name = "features.2"
    if cls is ConvHead:
        logits = nn.Sequential(model.features, model.pool, model.head).eval()
        ref = reference(logits, ["0.2"], x, target)
        ref = {k.replace("0.2", module_name): v for k, v in ref.items()}
    else:
        ref = reference(model, [module_name], x, target)
    np.testing.assert_array_equal(ours["target_used"], ref["target_used"])
    assert relative_error(ours["scores"], ref["scores"]) <= 1e-4
    assert relative_error(ours[f"gradient:{layer}"], ref[f"gradient:{module_name}"]) <= 1e-4


def test_not_an_onnx_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(OnnxSourceError, match="not an ONNX model"):
        export_onnx_file(bad, None, **QUIET)


def test_cli_export_and_info(tmp_path: Path) -> None:
    out = tmp_path / "r18.onnx"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(1000)))
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "export",
            "torchvision:resnet18",
            "--layer",
            "layer3",
            "--output",
            str(out),
            "--labels",
            str(labels),
            "--exporter",
            "torchscript",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "verified against float64 torch.autograd: relative error" in result.output
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert "layers (1): layer3" in info.output and "labels: 1000" in info.output
    assert "gradient:layer3" in info.output and "[N, 256, 14, 14]" in info.output

    bad = runner.invoke(main, ["export", "torchvision:resnet18", "--layer", "layer9", "--output", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "unknown layer 'layer9'" in bad.output
    assert not (tmp_path / "x").exists()


def test_metadata_round_trip() -> None:
    meta = contract.Metadata(layers=("a", "b"), labels=("x", "y"), source="s", exporter="e")
    props = meta.to_props()
    assert json.loads(props[contract.META_LAYERS]) == ["a", "b"]
    assert contract.Metadata.from_props(props) == meta
    with pytest.raises(ValueError, match="not an onnxcam explainer graph"):
        contract.Metadata.from_props({})

"""Deployed precision: float16 and int8 (QDQ) ONNX classifiers exported and explained; QOperator refused.

Three networks (random init, seed 0): the small GapNet at 32×32 (fast), torchvision's resnet18 and
mobilenet_v3_large at 64×64 (slow), exported by the TorchScript exporter, then converted as
deployments do: ``onnxconverter_common.float16.convert_float_to_float16`` (float16 I/O, and ``keep_io_types``), and
``onnxruntime.quantization.quantize_static`` (QDQ per-tensor and per-channel, QOperator) calibrated on 4 random
images. Each export is verified at export time: float16 by float64 finite differences of the same graph, int8 QDQ
against the clip-only straight-through-estimator reference (:mod:`onnxcam_export.quantization`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.autodiff.registry import RULES
from onnxcam_export.quantization import QuantizedFormatError
from onnxcam_export.sources import load_module
from onnxcam_export.verify import VerificationError
from scipy.stats import spearmanr
from small_models import GapNet

from onnxcam.explainer import Explainer


def calibrated_batchnorm(net: torch.nn.Module, size: int) -> torch.nn.Module:
    """``net`` with its BatchNorm running statistics set to the batch statistics of 16 standard-normal images (the
    inputs the tests feed), in eval mode.

    At random init the running statistics are (0, 1) whatever the layer computes, so mobilenet_v3_large's features
    shrink to ~3e-9 (logits ~1e-10): below float16's range, the float16 graph computes zeros. A trained network's
    statistics normalise each layer to O(1); these do the same for the test inputs (features ~0.6).
    """
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: exactly this batch's statistics
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(5)))
    return net.eval()


NETS = {
    "gapnet": (GapNet, 32),
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), 64),
    "mobilenet_v3_large": (lambda: calibrated_batchnorm(torchvision.models.mobilenet_v3_large(weights=None), 64), 64),
}
onnxconverter_common = pytest.importorskip("onnxconverter_common")


class _Calibration:
    """``CalibrationDataReader`` protocol: 4 random images."""

    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(0)
        self.it = iter([{"images": rng.standard_normal((1, 3, size, size)).astype(np.float32)} for _ in range(4)])

    def get_next(self) -> dict | None:
        return next(self.it, None)


@pytest.fixture(
    scope="module",
    params=[
        "gapnet",
        pytest.param("resnet18", marks=pytest.mark.slow),
        pytest.param("mobilenet_v3_large", marks=pytest.mark.slow),
    ],
)
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from onnxconverter_common import float16
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger().setLevel(logging.ERROR)
    w = tmp_path_factory.mktemp(request.param)
    build, size = NETS[request.param]
    torch.manual_seed(0)
    net = build().eval()
    paths = {k: w / f"{k}.onnx" for k in ["fp32", "fp16", "fp16_io32", "qdq", "qdq_channel", "qoperator"]}
    torch.onnx.export(
        net,
        (torch.randn(1, 3, size, size),),
        str(paths["fp32"]),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    fp32 = onnx.load(str(paths["fp32"]))
    onnx.save(float16.convert_float_to_float16(fp32), str(paths["fp16"]))
    onnx.save(float16.convert_float_to_float16(fp32, keep_io_types=True), str(paths["fp16_io32"]))
    quant_pre_process(str(paths["fp32"]), str(w / "prep.onnx"))
    for name, fmt, channel in [
        ("qdq", QuantFormat.QDQ, False),
        ("qdq_channel", QuantFormat.QDQ, True),
        ("qoperator", QuantFormat.QOperator, False),
    ]:
        quantize_static(
            str(w / "prep.onnx"),
            str(paths[name]),
            _Calibration(size),
            quant_format=fmt,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=channel,
        )
    return paths


@pytest.fixture(scope="module")
def explainers(models: dict[str, Path]) -> dict[str, tuple[Explainer, list[str]]]:
    """Every exportable model exported (verified); the log lines kept."""
    out = {}
    for name in ["fp32", "fp16", "fp16_io32", "qdq", "qdq_channel"]:
        log: list[str] = []
        path = models[name].with_suffix(".explainer.onnx")
        _, report = export_onnx_file(models[name], path, log=log.append)
        assert report is not None and report.typical <= 1e-4, (name, report)
        out[name] = (Explainer(path, provider="cpu"), log)
    return out


def _images(explainer: Explainer) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((4, *explainer.input_shape)).astype(np.float32)


@pytest.mark.parametrize("name", ["fp16", "fp16_io32"])
def test_float16_exports_verified_and_agreement_logged(explainers: dict, name: str) -> None:
    explainer, log = explainers[name]
    line = next(line for line in log if line.startswith("float16 graph vs the same graph in float64"))
    gradients = float(line.split("gradients ")[1].split(",")[0])
    assert gradients < 1e-2, line  # float16 rounding (11-bit mantissa), not a wrong rule
    out = explainer.run(_images(explainer), np.full(4, -1, np.int64))
    assert all(g.dtype == np.float32 for g in out.gradients.values())  # float16 outputs cast on read


@pytest.mark.parametrize("keep_io_types", [False, True])
def test_float16_trailing_softmax_still_left_out(tmp_path: Path, keep_io_types: bool) -> None:
    """The float32 Cast goes before the Softmax (keep_io_types puts its own after it), so the logits are explained."""
    from onnxconverter_common import float16

    torch.manual_seed(0)
    net = torch.nn.Sequential(GapNet(), torch.nn.Softmax(1)).eval()
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False)
    onnx.save(
        float16.convert_float_to_float16(onnx.load(str(tmp_path / "m.onnx")), keep_io_types=keep_io_types),
        str(tmp_path / "fp16.onnx"),
    )
    log: list[str] = []
    export_onnx_file(tmp_path / "fp16.onnx", tmp_path / "fp16.explainer.onnx", log=log.append)
    assert "scores: logits (the trailing Softmax is left out: its input is explained)" in log


@pytest.mark.parametrize("name", ["fp16", "fp16_io32"])
def test_float16_gradcam_agrees_with_float32(explainers: dict, name: str) -> None:
    """Grad-CAM (and Ablation-CAM, through the float16 head graph) of the float16 model vs the float32 model: same
    class, maps rank-correlated (Spearman ≥ 0.99). int8 is measured on real photos with the pretrained demo model
    (``test_int8_and_float16_demo_model_on_photos``): on random weights and noise images int8 rounding is a large
    part of the scores' spread, so no agreement is to be expected there."""
    x = _images(explainers["fp32"][0])
    reference = explainers["fp32"][0].explain_arrays(x, methods=("gradcam", "ablationcam"))
    deployed = explainers[name][0].explain_arrays(x, methods=("gradcam", "ablationcam"))
    for ref, ours in zip(reference, deployed, strict=True):
        assert ours.class_index == ref.class_index
        for method in ("gradcam", "ablationcam"):
            rho = spearmanr(ref.maps[method].ravel(), ours.maps[method].ravel()).statistic
            assert rho >= 0.99, (name, method, rho)


@pytest.mark.parametrize("name", ["qdq", "qdq_channel"])
def test_int8_explains_with_all_contract_outputs(explainers: dict, name: str) -> None:
    explainer = explainers[name][0]
    (result,) = explainer.explain_arrays(_images(explainer)[:1], methods=("gradcam", "ablationcam"))
    for cam in result.maps.values():
        assert np.isfinite(cam).all() and float(np.std(cam)) > 0  # a gradient reached the layer: not a flat map


def test_qdq_default_layer_is_a_dequantized_float_tensor(explainers: dict) -> None:
    (layer,) = explainers["qdq"][0].layers
    assert layer.endswith("_DequantizeLinear_Output")


def test_qoperator_refused_in_one_line(models: dict[str, Path]) -> None:
    with pytest.raises(QuantizedFormatError) as error:
        export_onnx_file(models["qoperator"], None, log=lambda _: None)
    message = str(error.value)
    assert "\n" not in message and "QLinearConv" in message and "QuantFormat.QDQ" in message


@pytest.fixture(scope="module")
def lite0(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The pretrained demo model (EfficientNet-Lite0, ImageNet) exported to ONNX float32 and quantization-prepared
    (``prep.onnx``), and 4 real photos preprocessed ``[4, 3, 224, 224]`` (cat, coffee, astronaut, rocket)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from skimage import data

    from onnxcam import contract
    from onnxcam.preprocess import preprocess_batch

    tmp = tmp_path_factory.mktemp("lite0")
    spec = contract.Preprocess(input_size=(224, 224), mean=LITE0_MEAN, std=LITE0_STD)
    x = preprocess_batch([data.chelsea(), data.coffee(), data.astronaut(), data.rocket()], spec)
    torch.onnx.export(
        load_module(f"{Path(__file__).resolve().parents[1]}/models/efficientnet_lite0.py:build", None).eval(),
        (torch.randn(1, 3, 224, 224),),
        str(tmp / "fp32.onnx"),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "prep.onnx"))
    return tmp, x


LITE0_MEAN, LITE0_STD = (127 / 255,) * 3, (128 / 255,) * 3


def int8_lite0(tmp: Path, calibration: np.ndarray, name: str) -> Path:
    """``prep.onnx`` quantized to int8 QDQ (per-channel weights, uint8 activations, MinMax ranges of ``calibration``),
    then exported to an explainer; returns the explainer's path."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    class Photos:
        def __init__(self) -> None:
            self.it = iter([{"images": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    quantize_static(
        str(tmp / "prep.onnx"),
        str(tmp / f"{name}.onnx"),
        Photos(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    path = tmp / f"{name}.explainer.onnx"
    export_onnx_file(tmp / f"{name}.onnx", path, mean=LITE0_MEAN, std=LITE0_STD, heads=False, log=lambda _: None)
    return path


@pytest.mark.slow
def test_int8_and_float16_demo_model_on_photos(lite0: tuple[Path, np.ndarray]) -> None:
    """EfficientNet-Lite0 as float32, float16 (float32 I/O) and int8 QDQ calibrated on the 4 photos it explains: the
    deployed models predict the float32 class and their Grad-CAM maps have Spearman ρ ≥ 0.9 with the float32 maps
    (measured: float16 > 0.9999, int8 0.95–0.99). The photo with the highest logit sets the top of the int8 scores'
    MinMax range: whether its score is clipped there depends on float32 rounding in the calibration (a kernel's
    summation order), so that one photo may instead come with the clipped-score warning and a blank map."""
    from onnxconverter_common import float16

    tmp, x = lite0
    fp16 = float16.convert_float_to_float16(onnx.load(str(tmp / "fp32.onnx")), keep_io_types=True)
    onnx.save(fp16, str(tmp / "fp16.onnx"))
    paths = {"int8": int8_lite0(tmp, x, "int8")}
    for name in ["fp32", "fp16"]:
        paths[name] = tmp / f"{name}.explainer.onnx"
        export_onnx_file(
            tmp / f"{name}.onnx", paths[name], mean=LITE0_MEAN, std=LITE0_STD, heads=False, log=lambda _: None
        )
    maps = {
        name: Explainer(path, provider="cpu").explain_arrays(x, methods=("gradcam",)) for name, path in paths.items()
    }
    top = int(np.argmax([r.score for r in maps["fp32"]]))
    for name in ["fp16", "int8"]:
        for n, (ref, ours) in enumerate(zip(maps["fp32"], maps[name], strict=True)):
            assert ours.class_index == ref.class_index
            if ours.warnings:
                assert (name, n) == ("int8", top) and "is clipped at the top" in ours.warnings[0], ours.warnings
                assert ours.maps["gradcam"].max() == 0
                continue
            rho = spearmanr(ref.maps["gradcam"].ravel(), ours.maps["gradcam"].ravel()).statistic
            assert rho >= 0.9, (name, ref.class_index, rho)


@pytest.mark.slow
def test_int8_score_clipped_by_calibration_is_reported(lite0: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    """int8 calibrated on 3 photos whose logits all stay below the coffee photo's (fp32: 10.6 vs 11.1, 8 int8 steps
    above the range): the coffee's score is clipped at the top of the scores' range, so its gradient is exactly 0
    (straight-through estimator). ``info`` shows the range; the explanation, the image's batch line and stderr say
    the score is clipped instead of handing back a blank map silently; the other photos get no such warning."""
    import cv2
    from click.testing import CliRunner
    from skimage import data

    from onnxcam.cli import main

    tmp, x = lite0
    path = int8_lite0(tmp, x[[0, 2, 3]], "int8_clipped")
    explainer = Explainer(path, provider="cpu")
    lo, hi = explainer.metadata.score_limits
    assert lo < 0 < 10 < hi < 11  # below the coffee's fp32 logit 11.1
    results = explainer.explain_arrays(x, methods=("gradcam",))
    assert [bool(r.warnings) for r in results] == [False, True, False, False]
    coffee = results[1]
    assert coffee.score == pytest.approx(hi, rel=1e-6) and coffee.maps["gradcam"].max() == 0
    assert coffee.warnings[0].startswith("the explained score (") and "clipped at the top" in coffee.warnings[0]
    info = CliRunner().invoke(main, ["info", str(path)])
    assert f"scores: int8, clipped to [{lo:.6g}, {hi:.6g}]" in info.output
    cv2.imwrite(str(tmp_path / "coffee.png"), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    result = CliRunner().invoke(main, ["explain", str(path), str(tmp_path / "coffee.png"), "-o", str(tmp_path / "o")])
    line = json.loads((tmp_path / "o" / "results.jsonl").read_text())
    assert result.exit_code == 0 and line["status"] == "ok", result.output
    assert any("is clipped at the top of the int8 scores' quantization range" in w for w in line["warnings"])
    assert "is clipped at the top" in result.stderr


def test_compare_command(models: dict[str, Path], explainers: dict, tmp_path: Path) -> None:
    """``onnxcam compare`` float32 vs float16 on two images: same classes, ρ ≈ 1, exit 0 under --min-correlation."""
    import cv2
    from click.testing import CliRunner

    from onnxcam.cli import main

    rng = np.random.default_rng(2)
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (48, 48, 3), np.uint8))
    fp32, fp16 = (str(models[n].with_suffix(".explainer.onnx")) for n in ("fp32", "fp16"))
    result = CliRunner().invoke(main, ["compare", fp32, fp16, str(tmp_path), "--min-correlation", "0.99"])
    assert result.exit_code == 0, result.output
    assert "2 images: class agreement 100.0%" in result.output


def test_float16_underflow_is_reported(tmp_path: Path) -> None:
    """A network whose layer values lie below float16's range (≈6e-8) exports, and the log says the map is lost."""
    from onnxconverter_common import float16

    torch.manual_seed(0)
    net = GapNet().eval()
    with torch.no_grad():
        for conv in (net.body[0], net.body[2]):  # the converter clamps weights to ≥ 1e-7: two layers reach ~1e-11
            conv.weight.mul_(1e-9)
            conv.bias.zero_()
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(tmp_path / "m.onnx"), opset_version=17, dynamo=False)
    onnx.save(float16.convert_float_to_float16(onnx.load(str(tmp_path / "m.onnx"))), str(tmp_path / "fp16.onnx"))
    log: list[str] = []
    # tolerance 1: the finite differences (step 1e-7 of the map's tiny scale) drown in the scores' float64 rounding
    # here, as they do for the float32 file; this test is about the warning, which the check's wrapper logs first
    export_onnx_file(tmp_path / "fp16.onnx", tmp_path / "fp16.explainer.onnx", tolerance=1.0, log=log.append)
    assert any(line.startswith("warning: float16 loses most of 'activation:") for line in log), log


def test_int8_layer_before_maxpool_verified(models: dict[str, Path]) -> None:
    """resnet18's stem ReLU feeds a MaxPool: quantized values tie there; the STE reference breaks the ties as the
    explainer routes them (the first maximum), so the layer and the input gradient verify."""
    if not any(n.op_type == "MaxPool" for n in onnx.load(str(models["qdq"])).graph.node):
        pytest.skip("no MaxPool in this network")
    layer = "/relu/Relu_output_0_DequantizeLinear_Output"
    _, report = export_onnx_file(models["qdq"], None, [layer], input_gradients=["standard"], log=lambda _: None)
    assert report is not None and report.typical <= 1e-4 and len(report.errors) == 2, report


class PoolNet(torch.nn.Module):
    """The int8 graph's common ops around a tapped layer: a stem before a MaxPool, a bilinear upsampling (its values
    land on halves of the quantization step) concatenated with the stem, a residual Add, a global max pool."""

    def __init__(self) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(conv(3, 8, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.down = torch.nn.Sequential(conv(8, 8, 3, padding=1), torch.nn.ReLU())
        self.fuse = conv(16, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = torch.nn.functional.interpolate(self.down(self.pool(a)), scale_factor=2, mode="bilinear")
        c = torch.relu(self.fuse(torch.cat([a, b], 1)) + a)
        return self.fc(torch.nn.functional.adaptive_max_pool2d(c, 1).flatten(1))


@pytest.mark.parametrize(
    "layer", ["/stem/stem.1/Relu_output_0_DequantizeLinear_Output", "/Resize_output_0_DequantizeLinear_Output"]
)
def test_int8_maxpool_resize_concat_add_verified(poolnet_int8: Path, layer: str) -> None:
    """QDQ PoolNet (per-channel, 32×32): the layer before the MaxPool and the upsampled map before the Concat export
    with their input gradient, verified against the STE reference (measured ≤ 2e-5)."""
    _, report = export_onnx_file(poolnet_int8, None, [layer], input_gradients=["standard"], log=lambda _: None)
    assert report is not None and report.typical <= 1e-4 and len(report.errors) == 2, report


@pytest.fixture(scope="module")
def poolnet_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:class:`PoolNet` quantized once (QDQ, per-channel, 4 random calibration images)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    w = tmp_path_factory.mktemp("poolnet")
    torch.manual_seed(0)
    torch.onnx.export(
        PoolNet().eval(),
        (torch.randn(1, 3, 32, 32),),
        str(w / "fp32.onnx"),
        input_names=["images"],
        output_names=["logits"],
        opset_version=17,
        dynamo=False,
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    quant_pre_process(str(w / "fp32.onnx"), str(w / "prep.onnx"), skip_symbolic_shape=True)
    quantize_static(
        str(w / "prep.onnx"),
        str(w / "int8.onnx"),
        _Calibration(32),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return w / "int8.onnx"


def test_torch_model_to_float16_verified_and_agrees(tmp_path: Path) -> None:
    """``export_model(..., precision='float16')`` and a ``model.half()`` model (float16 by default): the traced graph
    converted to float16, verified by float64 finite differences of that graph (≤ 1e-4), Grad-CAM of the same class
    as the float32 export with Spearman ρ ≥ 0.99."""
    from small_models import export_gapnet

    export_gapnet(tmp_path / "fp32.onnx")
    export_gapnet(tmp_path / "fp16.onnx", precision="float16")
    torch.manual_seed(0)
    log: list[str] = []
    _, report = export_model(
        GapNet().half(), tmp_path / "half.onnx", ["body.3"], (32, 32), exporter="torchscript", log=log.append
    )
    assert report is not None and report.typical <= 1e-4, report
    assert any(line.startswith("the model's weights are float16: exporting a float16 graph") for line in log), log
    assert any(line.startswith("verified against float64 finite differences") for line in log), log
    reference = Explainer(tmp_path / "fp32.onnx", provider="cpu")
    x = _images(reference)
    maps = reference.explain_arrays(x, methods=("gradcam",))
    for name in ("fp16", "half"):
        model = onnx.load(str(tmp_path / f"{name}.onnx"))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        for ref, ours in zip(maps, Explainer(tmp_path / f"{name}.onnx", provider="cpu").explain_arrays(x), strict=True):
            assert ours.class_index == ref.class_index
            assert spearmanr(ref.maps["gradcam"].ravel(), ours.maps["gradcam"].ravel()).statistic >= 0.99


def test_cli_export_pytorch_source_to_int8(tmp_path: Path) -> None:
    """``onnxcam export small_models.py:GapNet --precision int8 --calibration DIR``: onnxruntime's static QDQ
    quantization calibrated on the directory's images (preprocessed as the runtime does), verified against the STE
    reference; the layer is the dequantized tensor the next layer reads. Without --calibration: one line."""
    import cv2
    from click.testing import CliRunner

    from onnxcam.cli import main

    images = tmp_path / "calibration"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(4):
        cv2.imwrite(str(images / f"{i}.png"), rng.integers(0, 256, (48, 48, 3), np.uint8))
    source = f"{Path(__file__).parent / 'small_models.py'}:GapNet"
    common = [source, "--layer", "body.3", "--input-size", "32", "32", "--exporter", "torchscript"]
    out = tmp_path / "int8.onnx"
    result = CliRunner().invoke(
        main, ["export", *common, "-o", str(out), "--precision", "int8", "--calibration", str(images)]
    )
    assert result.exit_code == 0, result.output
    assert "verified against the straight-through estimator by float64 finite differences" in result.output
    graph = onnx.load(str(out)).graph
    producer = next(n for n in graph.node if "activation:body.3" in n.output)
    assert producer.op_type == "DequantizeLinear"
    (explained,) = Explainer(out, provider="cpu").explain_arrays(_images(Explainer(out, provider="cpu"))[:1])
    assert float(np.std(explained.maps["gradcam"])) > 0
    refused = CliRunner().invoke(main, ["export", *common, "-o", str(tmp_path / "x.onnx"), "--precision", "int8"])
    assert refused.exit_code == 1 and "needs calibration images (--calibration DIR" in refused.output
    assert len(refused.output.strip().splitlines()) == 1, refused.output


def test_float16_ablation_on_a_layer_with_negative_values(tmp_path: Path) -> None:
    """Ablation-CAM sets an ablated channel of a map with negative values to ``min − 1e7``: beyond float16's range,
    it saturates to −65504 in a float16 head graph (was −inf, and the next convolution's ±inf sums NaN maps).
    A HardSwish layer (values ≥ −0.375) before a convolution: finite maps, same class and Spearman ρ ≥ 0.99 with the
    float32 export's."""
    nn = torch.nn
    maps = {}
    for name in ("float32", "float16"):
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Hardswish(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.Hardswish(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )
        path = tmp_path / f"{name}.onnx"
        export_model(net, path, ["1"], (32, 32), exporter="torchscript", log=lambda _: None, precision=name)
        explainer = Explainer(path, provider="cpu")
        maps[name] = explainer.explain_arrays(_images(explainer), methods=("ablationcam",))
    for ref, ours in zip(maps["float32"], maps["float16"], strict=True):
        assert np.isfinite(ours.maps["ablationcam"]).all() and ours.class_index == ref.class_index
        assert spearmanr(ref.maps["ablationcam"].ravel(), ours.maps["ablationcam"].ravel()).statistic >= 0.99


def test_precision_of_an_already_deployed_file_refused_in_one_line(models: dict[str, Path]) -> None:
    from onnxcam_export.deploy import PrecisionError

    for name, kind in [("fp16", "float16"), ("qdq", "int8 (QDQ)")]:
        with pytest.raises(PrecisionError) as error:
            export_onnx_file(models[name], None, precision="int8", calibration=np.zeros((1, 3, 8, 8), np.float32))
        assert str(error.value) == f"--precision int8: the model is {kind} already; export it without --precision"


def _halved(rule):
    """``rule`` made wrong on purpose: the gradient of its first input halved."""

    def wrong(ctx):
        grads = rule(ctx)
        return [ctx.emit("Mul", grads[0], ctx.const(0.5, like=ctx.output())), *grads[1:]]

    return wrong


@pytest.mark.parametrize(
    ("op", "named"),
    [
        ("Gemm", "first node on the backward path whose VJP disagrees with finite differences: '/fc/Gemm' (Gemm,"),
        ("DequantizeLinear", "every float node's VJP agrees locally: look at the straight-through rules of"),
    ],
)
def test_int8_verifier_names_where_it_goes_wrong(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, op: str, named: str
) -> None:
    """A wrong rule in a QDQ graph is refused by the STE reference naming the node (a float op's VJP, located as the
    float verifier does) or the straight-through rules (every float node agreeing), in one line."""
    if not models["qdq"].parent.name.startswith("gapnet"):
        pytest.skip("one small network is enough")
    monkeypatch.setitem(RULES, op, _halved(RULES[op]))
    with pytest.raises(VerificationError) as refused:
        export_onnx_file(models["qdq"], None, log=lambda _: None)
    message = str(refused.value)
    assert message.startswith("explainer graph is wrong: ") and named in message and "\n" not in message, message

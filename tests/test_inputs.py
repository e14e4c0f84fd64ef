"""Inputs as models take them: channel counts, channel order, value scale, NHWC and uint8 ONNX inputs, API arrays.

Every map is compared with the map of the same graph on a batch preprocessed by hand (the model's documented
preprocessing written out in numpy/OpenCV), or with the map of an equivalent NCHW float model; logits with the
original model (PyTorch or onnxruntime on the original file).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.inputs import InputError
from small_models import export_gapnet
from torch import nn

from onnxcam import contract
from onnxcam.batch import BatchUsageError, run_batch
from onnxcam.cli import main
from onnxcam.explainer import Explainer
from onnxcam.model_file import describe
from onnxcam.pixels import PixelFormatError

QUIET = {"log": lambda _: None}
SIZE = (24, 28)  # H, W
IMAGE = np.random.default_rng(0).integers(0, 256, (37, 45, 3), np.uint8)


class Net(nn.Module):
    """A small classifier taking ``channels`` input channels (4 classes); layer ``body.3``."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(channels)
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():  # make every input channel matter differently
            self.body[0].weight[:, 0] *= 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


class Deployed(nn.Module):
    """``net`` as deployments ship it: NHWC input, float [0, 1] or uint8 pixels, normalisation inside."""

    def __init__(self, net: nn.Module, uint8: bool) -> None:
        super().__init__()
        self.net, self.uint8 = net, uint8
        self.register_buffer("mean", torch.tensor(contract.Preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(contract.Preprocess.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = x.float() / 255.0 if self.uint8 else x
        return self.net((x - self.mean) / self.std)


def resized(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def chw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((x if x.ndim == 3 else x[..., None]).transpose(2, 0, 1)[None], np.float32)


def same_map(explainer: Explainer, image: np.ndarray | Path, manual: np.ndarray, target: int = 1) -> None:
    """``explain(image)`` equals ``explain_arrays`` of the hand-preprocessed batch (map and score)."""
    [got] = explainer.explain(image, target=target)
    [want] = explainer.explain_arrays(manual, target=target)
    np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], atol=1e-6)
    assert got.score == pytest.approx(want.score, rel=1e-6, abs=1e-6)


def torch_file(model: nn.Module, path: Path, example: torch.Tensor) -> Path:
    torch.onnx.export(
        model.eval(), (example,), str(path), input_names=["pixels"], output_names=["logits"], dynamo=False
    )
    return path


def relu_outputs(path: Path) -> list[str]:
    import onnx

    return [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Relu"]


# ------------------------------------------------------------------------------------------ channel counts, PyTorch


@pytest.fixture(scope="module")
def grey_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    net = Net(1).eval()
    path = tmp_path_factory.mktemp("grey") / "grey.onnx"
    export_model(net, path, ["body.3"], SIZE, mean=(0.5,), std=(0.25,), exporter="torchscript", **QUIET)
    return path, net


def test_one_channel_pytorch_model_is_detected_and_fed_grey(grey_model: tuple[Path, nn.Module]) -> None:
    path, net = grey_model
    explainer = Explainer(path, provider="cpu")
    spec = explainer.preprocess
    assert (spec.channels, spec.channel_order, spec.mean, spec.std) == (1, "grey", (0.5,), (0.25,))
    grey = cv2.cvtColor(IMAGE, cv2.COLOR_RGB2GRAY)
    manual = chw((resized(grey) / 255 - 0.5) / 0.25)
    same_map(explainer, IMAGE, manual)  # colour → grey
    same_map(explainer, grey, manual)  # 2-D grey as is
    same_map(explainer, grey[..., None], manual)
    with torch.no_grad():
        logits = net(torch.from_numpy(manual)).numpy()
    np.testing.assert_allclose(explainer.scores(manual), logits, rtol=1e-5, atol=1e-5)


def test_one_channel_onnx_file_explains_a_grey_png(tmp_path: Path) -> None:
    source = torch_file(Net(1), tmp_path / "plain.onnx", torch.randn(1, 1, *SIZE))
    export_onnx_file(source, tmp_path / "e.onnx", [relu_outputs(source)[1]], mean=(0.5,), std=(0.5,), **QUIET)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert explainer.preprocess.channels == 1 and explainer.input_shape == (1, *SIZE)
    grey = cv2.cvtColor(IMAGE, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    same_map(explainer, tmp_path / "grey.png", chw((resized(grey) / 255 - 0.5) / 0.5))
    assert "1 channel grey" in describe(tmp_path / "e.onnx")
    with pytest.raises(InputError, match=r"--channels 3: the model's input NCHW \[\?, 1, 24, 28\] has 1 channel$"):
        export_onnx_file(source, None, channels=3, verify=False, **QUIET)
    with pytest.raises(InputError, match=r"--input-size 32 32: .* takes 24x28"):
        export_onnx_file(source, None, input_size=(32, 32), verify=False, **QUIET)


def test_four_channel_model_takes_arrays_only(tmp_path: Path) -> None:
    export_model(Net(4).eval(), tmp_path / "m.onnx", ["body.3"], SIZE, exporter="torchscript", **QUIET)
    explainer = Explainer(tmp_path / "m.onnx", provider="cpu")
    assert (explainer.preprocess.channels, explainer.preprocess.mean, explainer.preprocess.std) == (4, (0.0,), (1.0,))
    rgba = np.dstack([IMAGE, IMAGE[..., :1] // 2])
    same_map(explainer, rgba, chw(resized(rgba) / 255))
    cv2.imwrite(str(tmp_path / "x.png"), IMAGE)
    with pytest.raises(PixelFormatError, match="takes 4 input channels; image files decode to grey or RGB"):
        explainer.explain(tmp_path / "x.png")
    with pytest.raises(PixelFormatError, match=r"3 channels; this model takes H×W×4"):
        explainer.explain(IMAGE)
    with pytest.raises(
        ValueError, match=r"has shape \[\?, 4, 24, 28\] but the given preprocess .* needs \[N, 3, 24, 28\]"
    ):
        Explainer(tmp_path / "m.onnx", provider="cpu", preprocess=contract.Preprocess(input_size=SIZE))
    with pytest.raises(BatchUsageError, match="takes 4 input channels"):
        run_batch(explainer, [tmp_path / "x.png"], tmp_path / "out")


def test_declared_channels_must_fit_the_model() -> None:
    with pytest.raises(InputError, match=r"fails on an input \[1, 3, 24, 28\].*set --channels"):
        export_model(Net(1).eval(), None, ["body.3"], SIZE, channels=3, verify=False, **QUIET)
    with pytest.raises(InputError, match="mean has 2 values; the input has 1 channel"):
        export_model(Net(1).eval(), None, ["body.3"], SIZE, mean=(0.1, 0.2), verify=False, **QUIET)
    with pytest.raises(InputError, match="channel order BGR needs 3 channels"):
        export_model(Net(1).eval(), None, ["body.3"], SIZE, channel_order="BGR", verify=False, **QUIET)


# ------------------------------------------------------------------------------------------ channel order and range


def test_bgr_0_255_model_gets_its_own_preprocessing(tmp_path: Path) -> None:
    """A Caffe-style file: BGR pixels 0..255 minus a mean. Logits equal the original file on its own preprocessing."""
    source = torch_file(Net(3), tmp_path / "caffe.onnx", torch.randn(1, 3, *SIZE))
    layer = relu_outputs(source)[1]
    mean = (103.94, 116.78, 123.68)
    common = {"mean": mean, "std": (1.0,), "value_scale": 1.0, **QUIET}
    export_onnx_file(source, tmp_path / "bgr.onnx", [layer], channel_order="BGR", **common)
    export_onnx_file(source, tmp_path / "rgb.onnx", [layer], **common)
    bgr = Explainer(tmp_path / "bgr.onnx", provider="cpu")
    manual = chw(resized(IMAGE)[..., ::-1] - np.float32(mean))
    same_map(bgr, IMAGE, manual)
    own = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"pixels": manual})[0]
    [result] = bgr.explain(IMAGE, target=1)
    assert result.score == pytest.approx(float(own[0, 1]), rel=1e-5)
    [rgb] = Explainer(tmp_path / "rgb.onnx", provider="cpu").explain(IMAGE, target=1)
    assert np.abs(rgb.maps["gradcam"] - result.maps["gradcam"]).max() > 0.05  # the order matters for this model
    text = describe(tmp_path / "bgr.onnx")
    assert "3 channels BGR" in text and "x = (pixel·1 − mean)" in text and "pixels scaled to [0, 255]" in text


# ------------------------------------------------------------------------------------------ NHWC and uint8 ONNX inputs


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Explainer]]:
    """One network as NCHW float (normalised input), NHWC float [0, 1] and NHWC uint8 files, exported."""
    folder = tmp_path_factory.mktemp("deployed")
    net = Net(3).eval()
    files = {
        "nchw": (net, torch.randn(1, 3, *SIZE), {}),
        "nhwc": (Deployed(net, False), torch.rand(1, *SIZE, 3), {"mean": (0.0,), "std": (1.0,)}),
        "uint8": (Deployed(net, True), torch.randint(0, 256, (1, *SIZE, 3), dtype=torch.uint8), {}),
    }
    explainers = {}
    for name, (model, example, options) in files.items():
        source = torch_file(model, folder / f"{name}.src.onnx", example)
        layer = relu_outputs(source)[1]
        export_onnx_file(source, folder / f"{name}.onnx", [layer], input_gradients=["standard"], **options, **QUIET)
        explainers[name] = (folder / f"{name}.onnx", Explainer(folder / f"{name}.onnx", provider="cpu"))
    return explainers


@pytest.mark.parametrize("name", ["nhwc", "uint8"])
def test_nhwc_and_uint8_inputs_explain_as_the_nchw_model(
    deployed: dict[str, tuple[Path, Explainer]], name: str
) -> None:
    (path, ours), (_, reference) = deployed[name], deployed["nchw"]
    spec = ours.preprocess
    assert (spec.input_layout, spec.input_dtype, spec.input_size, spec.channels) == (
        "NHWC",
        "uint8" if name == "uint8" else "float32",
        SIZE,
        3,
    )
    [got] = ours.explain(IMAGE, target=2)
    [want] = reference.explain(IMAGE, target=2)
    np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], atol=1e-4)
    assert got.score == pytest.approx(want.score, rel=1e-4)
    assert ours.graph.inputs[0].shape[1:] == (3, *SIZE)  # the explainer's input is NCHW
    # input gradients: [N, C, H, W], the chain rule through each file's own input scaling
    seed = np.eye(4, dtype=np.float32)[2]
    g_ours = ours.input_gradient(chw(resized(IMAGE)) * np.float32(spec.value_scale), seed)
    x_ref = (chw(resized(IMAGE)) / 255 - np.float32(contract.Preprocess.mean)[:, None, None]) / np.float32(
        contract.Preprocess.std
    )[:, None, None]
    g_ref = reference.input_gradient(x_ref, seed)
    scale = np.float32(spec.value_scale) * 255 * np.float32(contract.Preprocess.std)[:, None, None]
    assert g_ours.shape == (1, 3, *SIZE)
    np.testing.assert_allclose(g_ours * scale, g_ref, rtol=1e-3, atol=1e-4 * float(np.abs(g_ref).max()))
    text = describe(path)
    assert f"model input: {spec.input_dtype} NHWC [N, 24, 28, 3]" in text and "inside: a Transpose to NHWC" in text


def test_uint8_model_refuses_a_normalisation(tmp_path: Path) -> None:
    source = torch_file(
        Deployed(Net(3), True), tmp_path / "u8.onnx", torch.randint(0, 256, (1, *SIZE, 3), dtype=torch.uint8)
    )
    with pytest.raises(InputError, match="--mean: the model's input is uint8, so it takes raw pixels"):
        export_onnx_file(source, None, mean=(0.5,), verify=False, **QUIET)


def test_pytorch_channels_last_model(tmp_path: Path) -> None:
    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = Net(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.permute(0, 3, 1, 2))

    model = ChannelsLast().eval()
    export_model(model, tmp_path / "l.onnx", ["net.body.3"], SIZE, exporter="torchscript", input_layout="NHWC", **QUIET)
    assert not model._forward_pre_hooks  # the caller's model is left as it was
    export_model(model.net, tmp_path / "f.onnx", ["body.3"], SIZE, exporter="torchscript", **QUIET)
    [got] = Explainer(tmp_path / "l.onnx", provider="cpu").explain(IMAGE, target=0)
    [want] = Explainer(tmp_path / "f.onnx", provider="cpu").explain(IMAGE, target=0)
    np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], atol=1e-5)


# ------------------------------------------------------------------------------------------ Python API arrays


@pytest.fixture(scope="module")
def rgb_explainer(tmp_path_factory: pytest.TempPathFactory) -> Explainer:
    return Explainer(export_gapnet(tmp_path_factory.mktemp("arrays") / "gap.onnx"), provider="cpu")


def test_api_arrays_go_through_the_file_conversion(rgb_explainer: Explainer) -> None:
    [ref] = rgb_explainer.explain(IMAGE, target=3)
    for same in (IMAGE.astype(np.float32) / 255, IMAGE.astype(np.float64) / 255, np.dstack([IMAGE, IMAGE[..., :1]])):
        [got] = rgb_explainer.explain(same, target=3)
        np.testing.assert_allclose(got.maps["gradcam"], ref.maps["gradcam"], atol=1e-6)
    grey = cv2.cvtColor(IMAGE, cv2.COLOR_RGB2GRAY)
    [from_grey] = rgb_explainer.explain(grey, target=3)
    [from_rgb_grey] = rgb_explainer.explain(np.dstack([grey] * 3), target=3)
    np.testing.assert_array_equal(from_grey.maps["gradcam"], from_rgb_grey.maps["gradcam"])
    assert len(rgb_explainer.explain(np.stack([IMAGE, IMAGE]), target=3)) == 2  # N×H×W×3: a batch
    with pytest.raises(ValueError, match=r"takes a preprocessed batch \[N, 3, H, W\], got shape \(37, 45, 3\)"):
        rgb_explainer.explain_arrays(IMAGE.astype(np.float32))


@pytest.mark.parametrize(
    ("array", "cause"),
    [
        (IMAGE.astype(np.float32), r"float values span \[0, 255\], not \[0, 1\]"),
        (IMAGE.astype(np.int64), "int64 pixels are not accepted"),
        (np.full((8, 8, 3), np.nan, np.float32), "not finite"),
        (np.zeros((8, 8, 5), np.uint8), "5 channels"),
        (np.zeros((8, 8, 2), np.uint8), "2 channels"),
        (np.zeros((0, 8, 3), np.uint8), "not an image array"),
    ],
    ids=["float-0-255", "int64", "nan", "5-channels", "2-channels", "empty"],
)
def test_api_refuses_other_arrays_naming_the_format(rgb_explainer: Explainer, array: np.ndarray, cause: str) -> None:
    with pytest.raises(PixelFormatError, match=cause) as info:
        rgb_explainer.explain(array)
    message = str(info.value)
    assert "H×W×3 (RGB)" in message and "uint8 0–255 or float in [0, 1]" in message and "\n" not in message


# ------------------------------------------------------------------------------------------ CLI and contract


def test_cli_options_declare_the_input(tmp_path: Path, grey_model: tuple[Path, nn.Module]) -> None:
    recipe = tmp_path / "recipe.py"
    recipe.write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)]\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), *head)\n"
    )
    runner = CliRunner()
    args = ["export", f"{recipe}:build", "--input-size", "16", "16", "--exporter", "torchscript"]
    ok = runner.invoke(
        main, [*args, "--mean", "0.5", "--std", "0.2", "--scale", "1/255", "-o", str(tmp_path / "a.onnx")]
    )
    assert ok.exit_code == 0, ok.output
    spec = Explainer(tmp_path / "a.onnx", provider="cpu").preprocess
    assert (spec.channels, spec.mean, spec.std, spec.value_scale) == (1, (0.5,), (0.2,), pytest.approx(1 / 255))
    bad = runner.invoke(main, [*args, "--mean", "0.1", "0.2", "0.3", "-o", str(tmp_path / "b.onnx")])
    assert bad.exit_code != 0 and "mean has 3 values; the input has 1 channel" in bad.output
    bad = runner.invoke(main, [*args, "--scale", "one", "-o", str(tmp_path / "b.onnx")])
    assert bad.exit_code != 0 and "--scale: expected a number or a fraction" in bad.output
    info = runner.invoke(main, ["info", str(grey_model[0])])
    assert "1 channel grey" in info.output and "model input: float32 NCHW [N, 1, 24, 28]" in info.output


def test_files_written_before_the_input_fields_keep_their_meaning() -> None:
    old = '{"input_size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "channel_order": "BGR", '
    spec = contract.Preprocess.from_json(old + '"value_scale": 0.00392156862745098, "resize": "bilinear"}')
    assert (spec.channels, spec.input_dtype, spec.input_layout, spec.channel_order) == (3, "float32", "NCHW", "BGR")
    assert contract.Preprocess.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="std has 2 values"):
        contract.Preprocess(std=(1.0, 2.0))


def uint8_nchw_file(path: Path, arithmetic_first: bool = False) -> Path:
    """A uint8 NCHW file: Cast to float, /255, conv, ReLU (``r``), GAP, Gemm; or (``arithmetic_first``) an Add on
    the uint8 pixels before the Cast."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "fw"),
        numpy_helper.from_array(np.float32(255.0), "k"),
        numpy_helper.from_array(np.uint8(1), "one"),
    ]
    first = [helper.make_node("Add", ["pixels", "one"], ["shifted"])] if arithmetic_first else []
    nodes = [
        *first,
        helper.make_node("Cast", ["shifted" if arithmetic_first else "pixels"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "k"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "u8",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, [1, 3, *SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_uint8_nchw_file_is_fed_the_pixels_it_takes(tmp_path: Path) -> None:
    source = uint8_nchw_file(tmp_path / "u8.onnx")
    export_onnx_file(source, tmp_path / "e.onnx", ["r"], input_gradients=["standard"], **QUIET)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert (explainer.preprocess.input_dtype, explainer.preprocess.input_layout) == ("uint8", "NCHW")
    pixels = cv2.resize(IMAGE, (SIZE[1], SIZE[0]), interpolation=cv2.INTER_LINEAR)
    own = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    logits = own.run(None, {"pixels": np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])})[0]
    [result] = explainer.explain(IMAGE, target=2, methods=["gradcam", "saliency"])
    assert result.score == pytest.approx(float(logits[0, 2]), rel=1e-5)
    # the input gradient is ∂y/∂pixel: the float model on x = pixel / 255 has ∂y/∂x = 255 · ∂y/∂pixel
    grad = explainer.input_gradient(chw(pixels), np.eye(4, dtype=np.float32)[2])
    x = torch.from_numpy(chw(pixels) / 255).requires_grad_(True)
    w = torch.from_numpy(own_weights(source, "w"))
    y = (
        torch.relu(torch.nn.functional.conv2d(x, w, padding=1)).mean((2, 3))
        @ torch.from_numpy(own_weights(source, "fw")).T
    )
    (ref,) = torch.autograd.grad(y[0, 2], x)
    np.testing.assert_allclose(grad * 255, ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def own_weights(path: Path, name: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name == name)


def test_uint8_input_used_before_a_cast_is_refused(tmp_path: Path) -> None:
    source = uint8_nchw_file(tmp_path / "u8.onnx", arithmetic_first=True)
    with pytest.raises(InputError, match="uint8 input feeds an op that cannot take float pixels"):
        export_onnx_file(source, None, ["r"], verify=False, **QUIET)


class Caffe(nn.Module):
    """``net`` taking pixels 0..255 and normalising inside: ``(x − 255·mean) / (255·std)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", 255 * torch.tensor(contract.Preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", 255 * torch.tensor(contract.Preprocess.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


@pytest.mark.parametrize(
    ("name", "scale"), [("nhwc-0-1", 1 / 255), ("nchw-0-255", 1.0)], ids=["nhwc-0-1", "nchw-0-255"]
)
def test_a_normalisation_inside_the_file_is_not_applied_twice(
    tmp_path: Path, deployed: dict[str, tuple[Path, Explainer]], name: str, scale: float
) -> None:
    net = deployed["nchw"][1]
    model, example = (
        (Deployed(Net(3), False), torch.rand(1, *SIZE, 3))
        if name == "nhwc-0-1"
        else (Caffe(Net(3)), 255 * torch.rand(1, 3, *SIZE))
    )
    source = torch_file(model, tmp_path / "src.onnx", example)
    messages: list[str] = []
    export_onnx_file(source, tmp_path / "e.onnx", [relu_outputs(source)[1]], log=messages.append)
    assert any("the model normalises its input itself" in m for m in messages), messages
    ours = Explainer(tmp_path / "e.onnx", provider="cpu")
    spec = ours.preprocess
    assert (spec.mean, spec.std, spec.value_scale) == ((0.0,), (1.0,), pytest.approx(scale))
    [got] = ours.explain(IMAGE, target=2)
    [want] = net.explain(IMAGE, target=2)
    np.testing.assert_allclose(got.maps["gradcam"], want.maps["gradcam"], atol=1e-4)
    assert got.score == pytest.approx(want.score, rel=1e-4)


def test_evaluate_refuses_image_files_for_a_four_channel_model(tmp_path: Path) -> None:
    from onnxcam.metrics.job import EvaluationOptions, run_evaluation

    export_model(Net(4).eval(), tmp_path / "m.onnx", ["body.3"], SIZE, exporter="torchscript", **QUIET)
    cv2.imwrite(str(tmp_path / "x.png"), IMAGE)
    options = EvaluationOptions(metrics=("deletion",))
    with pytest.raises(BatchUsageError, match="takes 4 input channels; image files decode to grey or RGB"):
        run_evaluation(Explainer(tmp_path / "m.onnx", provider="cpu"), [tmp_path / "x.png"], tmp_path / "out", options)


def test_onnx_input_without_a_recorded_shape_takes_the_declarations(tmp_path: Path) -> None:
    import onnx

    source = torch_file(Net(1), tmp_path / "plain.onnx", torch.randn(1, 1, *SIZE))
    model = onnx.load(str(source))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(tmp_path / "shapeless.onnx"))
    layer = relu_outputs(source)[1]
    export_onnx_file(tmp_path / "shapeless.onnx", tmp_path / "e.onnx", [layer], SIZE, channels=1, **QUIET)
    explainer = Explainer(tmp_path / "e.onnx", provider="cpu")
    assert (explainer.preprocess.channels, explainer.preprocess.input_size) == (1, SIZE)
    grey = cv2.cvtColor(IMAGE, cv2.COLOR_RGB2GRAY)
    same_map(explainer, grey, chw(resized(grey) / 255))

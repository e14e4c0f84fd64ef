"""Export-time verification of the unit path (``--unit-layer``): with a random unit seed per image, the graph's
gradients vs float64 autograd of ``Σ unit_seed ⊙ U`` (PyTorch sources) and vs float64 finite differences (ONNX
sources); a rule that is wrong only on the unit path is refused; ``cam:gradcam`` of a unit seed is the runtime's
Grad-CAM of that unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.autodiff.registry import RULES
from onnxcam_export.autodiff.rules.reduce import reduce_sum
from onnxcam_export.verify import UNIT_PATH, VerificationError
from small_models import UnitNet

from onnxcam import contract

EXACT = 1e-6  # relative error of a right graph in float64 (measured ~1e-9 – 1e-8)


def _unit_net(seed: int = 0) -> UnitNet:
    torch.manual_seed(seed)
    return UnitNet().eval()


@pytest.fixture(scope="module")
def onnx_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """UnitNet as a foreign ONNX file and its Relu outputs (body.1, body.3, body.5, embed)."""
    path = tmp_path_factory.mktemp("unitverify") / "unitnet.onnx"
    torch.onnx.export(
        _unit_net(), torch.randn(1, 3, 32, 32), path, dynamo=False, input_names=["images"], opset_version=18
    )
    return path, [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Relu"]


def _unit_errors(report) -> dict[str, float]:
    return {k.removesuffix(UNIT_PATH): max(v) for k, v in report.errors.items() if k.endswith(UNIT_PATH)}


def test_torch_export_verifies_the_unit_path_against_autograd() -> None:
    """CAM layers before (body.1) and after (body.5: zero gradient) the unit layer body.3; standard and guided input
    gradients."""
    logs: list[str] = []
    _, report = export_model(
        _unit_net(),
        None,
        ["body.1", "body.5"],
        (32, 32),
        exporter="torchscript",
        input_gradients=("standard", "guided"),
        heads=False,
        log=logs.append,
        unit_layer="body.3",
    )
    unit = _unit_errors(report)
    assert set(unit) == {
        "gradient:body.1",
        "gradient:body.5",
        "gradient:input",
        "gradient:input:guided",
        "activation:body.3",
    }
    assert max(unit.values()) < EXACT, unit
    assert all(len(report.errors[k + UNIT_PATH]) == 3 for k in unit)  # three images kept
    verdict = next(line for line in logs if line.startswith("verified against"))
    assert "unit path worst" in verdict, verdict


def test_onnx_export_verifies_the_unit_path_by_finite_differences(onnx_source: tuple[Path, list[str]]) -> None:
    source, relus = onnx_source
    logs: list[str] = []
    _, report = export_onnx_file(
        source, None, [relus[0]], input_gradients=("standard",), heads=False, log=logs.append, unit_layer=relus[1]
    )
    unit = _unit_errors(report)
    assert set(unit) == {contract.gradient_name(relus[0]), contract.INPUT_GRADIENT}
    assert max(unit.values()) < EXACT, unit
    assert "unit path worst" in next(line for line in logs if line.startswith("verified against"))


def _reduce_sum_halved_over_maps(ctx):  # a wrong ReduceSum rule: halves the gradient of a sum over a map (rank 4)
    grad, none = reduce_sum(ctx)
    if ctx.rank(ctx.input(0)) < 4:
        return [grad, none]
    return [ctx.emit("Mul", grad, ctx.const(0.5, like=ctx.input(0))), none]


@pytest.mark.parametrize("source", ["torch", "onnx"])
def test_a_rule_wrong_only_on_the_unit_path_is_refused(
    monkeypatch: pytest.MonkeyPatch, onnx_source: tuple[Path, list[str]], source: str
) -> None:
    """UnitNet's class path has no rank-4 ReduceSum (its pooling is a ReduceMean); the unit objective
    ``Σ unit_seed ⊙ U`` over a ``[N, C, h, w]`` unit has one. The class path alone passes; the unit path refuses."""
    monkeypatch.setitem(RULES, "ReduceSum", _reduce_sum_halved_over_maps)
    path, relus = onnx_source

    def export(unit_layer: str | None) -> None:
        if source == "torch":
            options = {"exporter": "torchscript", "unit_layer": unit_layer and "body.3"}
            export_model(_unit_net(), None, ["body.1"], (32, 32), heads=False, log=lambda _: None, **options)
        else:
            export_onnx_file(path, None, [relus[0]], heads=False, log=lambda _: None, unit_layer=unit_layer)

    export(None)  # the class-path check alone cannot see this rule
    with pytest.raises(VerificationError) as refused:
        export(relus[1])
    message = str(refused.value)
    assert "\n" not in message
    assert UNIT_PATH in message and "> tolerance" in message, message
    assert "VJP disagrees" in message and "(ReduceSum," in message, message


def test_int8_qdq_export_verifies_the_unit_path_and_refuses_a_wrong_rule(
    monkeypatch: pytest.MonkeyPatch, onnx_source: tuple[Path, list[str]]
) -> None:
    """A QDQ file (straight-through estimator by finite differences): the unit path verified, then refused with the
    rule above."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from test_precision import _Calibration

    source, _ = onnx_source
    prep, qdq = source.with_name("prep.onnx"), source.with_name("qdq.onnx")
    quant_pre_process(str(source), str(prep))
    quantize_static(
        str(prep), str(qdq), _Calibration(32), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )  # fmt: skip
    # QDQ folds each ReLU into its Conv: the taps are the dequantized maps of body.1 and body.3
    layer, unit = (f"/body/body.{i}/Relu_output_0_DequantizeLinear_Output" for i in (1, 3))
    _, report = export_onnx_file(qdq, None, [layer], heads=False, log=lambda _: None, unit_layer=unit)
    errors = _unit_errors(report)
    assert set(errors) == {contract.gradient_name(layer)} and max(errors.values()) < 1e-4, errors
    monkeypatch.setitem(RULES, "ReduceSum", _reduce_sum_halved_over_maps)
    with pytest.raises(VerificationError, match=r"\(unit path\)"):
        export_onnx_file(qdq, None, [layer], heads=False, log=lambda _: None, unit_layer=unit)


def test_in_graph_gradcam_of_a_unit_seed_is_the_runtimes_gradcam_of_the_unit(tmp_path: Path) -> None:
    import onnxruntime as ort

    from onnxcam.explainer import Explainer
    from onnxcam.units import parse_unit

    path = tmp_path / "cams.onnx"
    export_model(
        _unit_net(),
        path,
        ["body.1"],
        (32, 32),
        exporter="torchscript",
        in_graph=["gradcam"],
        log=lambda _: None,
        unit_layer="body.3",
    )
    explainer = Explainer(path, provider="cpu")
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    targets = ["channel:5", "neuron:11,7,8"]
    seed = np.stack([parse_unit(t, explainer.metadata.unit).seed for t in targets])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {contract.INPUT: x, contract.TARGET: np.full(2, -1), contract.UNIT_SEED: seed}
    (cam,) = session.run([contract.cam_name("gradcam")], feeds)
    runtime = np.stack([e.maps["gradcam"] for e in explainer.explain_arrays(x, targets, "gradcam", ["body.1"])])
    assert runtime.max() > 0.99  # a real map (normalised to [0, 1]), not an empty one
    np.testing.assert_allclose(cam, runtime, atol=1e-5)
    # without the unit seed the same output is the class map
    (class_cam,) = session.run([contract.cam_name("gradcam")], {contract.INPUT: x, contract.TARGET: np.full(2, -1)})
    assert np.abs(class_cam - cam).max() > 0.1


def test_in_graph_with_a_layer_after_the_unit_layer_is_refused_in_one_line() -> None:
    from onnxcam_export.errors import ExportError

    with pytest.raises(ExportError, match=r"layer 'body\.5' lies after the unit layer") as refused:
        export_model(
            _unit_net(),
            None,
            ["body.1", "body.5"],
            (32, 32),
            exporter="torchscript",
            in_graph=["gradcam"],
            log=lambda _: None,
            unit_layer="body.3",
        )
    assert "\n" not in str(refused.value)

"""The optional parts ``--bias-gradients`` (``b ⊙ ∂y/∂z``, ``x ⊙ ∂y/∂x``) and ``--hvp`` (``H·A``) verified at export by
float64 finite differences (:mod:`onnxcam_export.verify_switched`): a correct export reports every such output within
1e-4 (relative to the output's directional derivative, worst image); a rule made wrong on purpose on these parts only
(the rest of the graph stays right and passes its own verification), or a corrupted constant inside them, is refused
in one line naming the output and the option, and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxcam_export import bias_gradients, hvp
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.autodiff.registry import RULES
from onnxcam_export.verify import VerificationError
from onnxcam_export.verify_switched import verify_switched
from test_methods_shapley import SmoothHead
from test_verify import _relu_leaky, onnx_source

from onnxcam import contract

QUIET = {"log": lambda _: None}
TOL = 1e-4
BOTH = {"bias_gradients": True, "hvp": True, "input_gradients": (), "heads": False}


def _tanh_without_square(ctx):  # a wrong Tanh rule: ḡ·(1 − y) instead of ḡ·(1 − y²)
    y = ctx.output()
    return [ctx.emit("Mul", ctx.grad(), ctx.emit("Sub", ctx.const(1.0, like=y), y))]


def _wrong_on(module, op: str, wrong, monkeypatch) -> None:
    """``module.differentiate`` (that part's reverse passes only) with ``RULES[op]`` replaced by ``wrong``."""
    original = module.differentiate

    def differentiate(*args, **kwargs):
        saved, RULES[op] = RULES[op], wrong
        try:
            return original(*args, **kwargs)
        finally:
            RULES[op] = saved

    monkeypatch.setattr(module, "differentiate", differentiate)


def _switched_errors(report) -> dict[str, float]:
    prefixes = (contract.BIAS_GRADIENT_PREFIX, contract.HVP_PREFIX)
    return {k: max(v) for k, v in report.errors.items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def smooth_torch() -> onnx.ModelProto:
    torch.manual_seed(0)
    explainer, report = export_model(SmoothHead(), None, ["body.1"], (32, 32), exporter="torchscript", **BOTH, **QUIET)
    errors = _switched_errors(report)
    # input term, 3 biased convolutions, H·A of body.1
    assert set(errors) == {*(contract.bias_gradient_name(i) for i in ("input", "0", "1", "2")), "hvp:body.1"}
    assert max(errors.values()) <= TOL, errors
    return explainer


def test_correct_pytorch_export_verifies_bias_gradients_and_hvp(smooth_torch) -> None:
    assert contract.BIAS_SWITCH in {i.name for i in smooth_torch.graph.input}


def test_correct_onnx_export_verifies_bias_gradients_and_hvp(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = onnx_source(SmoothHead(), tmp_path / "smooth.onnx")
    _, report = export_onnx_file(source, tmp_path / "out.onnx", ["/body/body.1/Relu_output_0"], **BOTH, **QUIET)
    errors = _switched_errors(report)
    assert len(errors) == 5 and max(errors.values()) <= TOL, errors
    assert (tmp_path / "out.onnx").is_file()


def test_wrong_rule_on_the_bias_part_only_is_refused(tmp_path: Path, monkeypatch) -> None:
    _wrong_on(bias_gradients, "Relu", _relu_leaky, monkeypatch)
    torch.manual_seed(0)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(VerificationError) as refused:
        export_model(SmoothHead(), out, ["body.1"], (32, 32), exporter="torchscript", **BOTH, **QUIET)
    message = str(refused.value)
    assert "(bias_gradient:" in message and "the --bias-gradients part" in message and "\n" not in message, message
    assert not out.exists()


def test_wrong_rule_on_the_hvp_part_only_is_refused_from_onnx(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(1)
    source = onnx_source(SmoothHead(), tmp_path / "smooth.onnx")
    _wrong_on(hvp, "Tanh", _tanh_without_square, monkeypatch)
    out = tmp_path / "wrong.onnx"
    with pytest.raises(VerificationError) as refused:
        export_onnx_file(source, out, ["/body/body.1/Relu_output_0"], **{**BOTH, "bias_gradients": False}, **QUIET)
    message = str(refused.value)
    assert "(hvp:/body/body.1/Relu_output_0)" in message and "the --hvp part" in message, message
    assert not out.exists()


def test_corrupted_bias_constant_is_refused(smooth_torch) -> None:
    """One channel of the second convolution's bias, as the bias part multiplies it, off by 5 %."""
    broken = onnx.ModelProto()
    broken.CopyFrom(smooth_torch)
    gate = next(n for n in broken.graph.node if n.op_type == "If" and n.input[0] == contract.BIAS_SWITCH)
    then = next(a.g for a in gate.attribute if a.name == "then_branch")
    constant = next(t for t in [*then.initializer, *broken.graph.initializer] if t.name == "fullgrad/bias_1")
    values = numpy_helper.to_array(constant).copy()
    values[0, 0] *= 1.05
    constant.CopyFrom(numpy_helper.from_array(values, constant.name))
    with pytest.raises(
        VerificationError, match=r"worst .* \(bias_gradient:1\), .* > tolerance .* --bias-gradients part"
    ):
        verify_switched(broken, [contract.BIAS_SWITCH])
    assert max(_switched_errors(verify_switched(smooth_torch, [contract.BIAS_SWITCH])).values()) <= TOL

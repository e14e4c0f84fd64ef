"""ShapleyCAM through an explainer graph exported with ``hvp=True`` (the backward graph differentiated again by our
engine) against pytorch-grad-cam 1.5.x ``ShapleyCAM`` and ``torch.autograd`` double backward, on a small CNN whose part
after the layer is smooth (SiLU, softmax-free logits), so that ``H·A`` is not zero; from an ONNX file too, with
``--bias-gradients`` (terms against ``torch.autograd``). Tolerances: ``H·A`` 1e-4 relative to its peak; bias terms
1e-5 relative to their peak; final [0, 1] maps 1e-4 absolute.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from method_cases import explain, relative_error
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export.api import export_model, export_onnx_file
from onnxcam_export.errors import ExportError
from onnxcam_export.switched_check import check_switched_parts
from pytorch_grad_cam import ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from small_models import GapNet, export_gapnet
from test_verify import onnx_source
from torch import nn
from torch_reference import fullgrad_terms, hessian_vector_products

from onnxcam import contract
from onnxcam.explainer import Explainer

MAP_TOL = 1e-4
HVP_TOL = 1e-4
TERM_TOL = 1e-5
TARGETS = [3, 5]


class SmoothHead(nn.Module):
    """conv-ReLU (the layer ``body.1``), conv-SiLU, conv-Tanh, global average pooling, linear; 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.SiLU(), nn.Conv2d(16, 16, 1)]
        self.body = nn.Sequential(*layers, nn.Tanh())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean((2, 3)))


@pytest.fixture(scope="module")
def smooth(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = SmoothHead().eval()
    path = tmp_path_factory.mktemp("smooth") / "smooth.onnx"
    export_model(
        model, path, ["body.1"], (32, 32), exporter="torchscript", input_gradients=(), log=lambda _: None, hvp=True
    )
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return model, Explainer(path, provider="cpu", threads=2), x


def test_hvp_is_torch_double_backward(smooth) -> None:
    model, explainer, x = smooth
    seed = np.eye(10, dtype=np.float32)[TARGETS]
    ours = explainer.hvp(x, seed)["body.1"]
    captured = {}
    handle = model.body[1].register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    y = (model(torch.from_numpy(x)) * torch.from_numpy(seed)).sum()
    handle.remove()
    a = captured["a"]
    (g,) = torch.autograd.grad(y, a, create_graph=True)
    (reference,) = torch.autograd.grad(g, a, grad_outputs=a.detach())
    assert np.abs(reference.numpy()).max() > 0.1 * np.abs(g.detach().numpy()).max()  # H·A matters here
    assert relative_error(ours, reference.numpy()) <= HVP_TOL


def test_onnx_file_hvp_and_bias_gradients_are_torch_autograd(tmp_path) -> None:
    """Exported from a foreign ONNX file with both optional parts at two layers: ``hvp:<layer>`` is torch's double
    backward at the ReLU (body.1) and the SiLU (body.3, ``Sigmoid·x`` in ONNX) outputs, and ``bias_gradient:*`` is
    torch autograd's ``x ⊙ ∂y/∂x`` and ``b ⊙ ∂y/∂z`` of the three convolutions, in graph order."""
    torch.manual_seed(0)
    model = SmoothHead().eval()
    layers = {"/body/body.1/Relu_output_0": "body.1", "/body/body.3/Mul_output_0": "body.3"}
    out = tmp_path / "smooth.explainer.onnx"
    source = onnx_source(model, tmp_path / "smooth.onnx")
    export_onnx_file(source, out, list(layers), input_gradients=(), bias_gradients=True, hvp=True, log=lambda _: None)
    explainer = Explainer(out, provider="cpu", threads=2)
    x = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    seed = np.eye(10, dtype=np.float32)[TARGETS]
    ours = explainer.hvp(x, seed)
    reference = hessian_vector_products(model, x, seed, list(layers.values()))
    for name, module in layers.items():
        assert np.abs(reference[module]).max() > 0, module
        assert relative_error(ours[name], reference[module]) <= HVP_TOL, name
    terms = explainer.bias_gradients(x, seed)
    expected = fullgrad_terms(model, x, seed, ["body.0", "body.2", "body.4"])
    assert len(terms) == len(expected) == 4
    for term, (got, want) in enumerate(zip(terms, expected, strict=True)):
        assert got.shape == want.shape and np.abs(want).max() > 0, term
        assert relative_error(got, want) <= TERM_TOL, (term, relative_error(got, want))


def test_shapley_cam_matches_pytorch_grad_cam(smooth) -> None:
    model, explainer, x = smooth
    with ShapleyCAM(model=model, target_layers=[model.body[1]]) as cam:
        reference = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in TARGETS])
    ours, _, _ = explain(explainer, x, TARGETS, "shapleycam")
    assert np.abs(ours - reference).max() <= MAP_TOL


def test_piecewise_linear_head_gives_a_zero_hvp_as_torch(tmp_path) -> None:
    """After ``body.3`` of :class:`GapNet` (ReLU, pooling, linear) ``G`` depends on ``A`` only through ReLU masks:
    ``H·A = 0`` (torch: an unused input), so ShapleyCAM is pytorch-grad-cam's and Grad-CAM's map."""
    path = export_gapnet(tmp_path / "gapnet.onnx", input_gradients=(), hvp=True)
    explainer = Explainer(path, provider="cpu", threads=2)
    torch.manual_seed(0)
    model = GapNet().eval()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert not explainer.hvp(x, np.eye(12, dtype=np.float32)[TARGETS])["body.3"].any()
    with ShapleyCAM(model=model, target_layers=[model.body[3]]) as cam:
        reference = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in TARGETS])
    ours, _, _ = explain(explainer, x, TARGETS, "shapleycam")
    assert np.abs(ours - reference).max() <= MAP_TOL
    np.testing.assert_allclose(ours, explain(explainer, x, TARGETS, "gradcam")[0], atol=1e-6)


def test_an_optional_part_onnxruntime_cannot_compute_is_refused_at_export() -> None:
    """``hvp:l`` of a hand-made graph reshapes ``[N, 3, 4, 4]`` to ``[N, 5]`` only when ``compute:hvp`` is on: the
    default run is fine, the export's smoke run of the switched part must refuse it in one line."""
    bad = helper.make_graph(
        [helper.make_node("Reshape", [contract.INPUT, "shape"], ["bad"])],
        "then",
        [],
        [helper.make_tensor_value_info("bad", TensorProto.FLOAT, None)],
    )
    empty = helper.make_graph(
        [helper.make_node("Constant", [], ["none"], value=numpy_helper.from_array(np.zeros((0, 5), np.float32)))],
        "else",
        [],
        [helper.make_tensor_value_info("none", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", [contract.HVP_SWITCH], [contract.hvp_name("l")], then_branch=bad, else_branch=empty)],
        "g",
        [
            helper.make_tensor_value_info(contract.INPUT, TensorProto.FLOAT, ["N", 3, 4, 4]),
            helper.make_tensor_value_info(contract.TARGET, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(contract.HVP_SWITCH, TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info(contract.hvp_name("l"), TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(np.array([-1, 5], np.int64), "shape"),
            numpy_helper.from_array(np.array(False), contract.HVP_SWITCH),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    metadata = contract.Metadata(layers=("l",), preprocess=contract.Preprocess(input_size=(4, 4)))
    with pytest.raises(ExportError, match=r"^--hvp: this model's part cannot be computed .*; export without --hvp$"):
        check_switched_parts(model, metadata, [contract.HVP_SWITCH])


class SqueezeExcite(nn.Module):
    """conv-ReLU (the layer ``act``), a squeeze-and-excitation gate (mean, 1×1 conv, SiLU, 1×1 conv, sigmoid), global
    average pooling, linear; 5 classes. The first backward's tensors get shape inference's own ``unk__`` dims, whose
    broadcasting the second pass must find at run time."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.fc1, self.fc2, self.head = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv(x))
        gate = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(a.mean((2, 3), keepdim=True)))))
        return self.head((a * gate).mean((2, 3)))


def test_hvp_through_a_squeeze_excitation_gate(tmp_path) -> None:
    torch.manual_seed(0)
    model = SqueezeExcite().eval()
    path = tmp_path / "se.onnx"
    export_model(model, path, ["act"], (8, 8), exporter="torchscript", input_gradients=(), log=lambda _: None, hvp=True)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    seed = np.eye(5, dtype=np.float32)[[1, 4]]
    ours = Explainer(path, provider="cpu").hvp(x, seed)["act"]
    captured = {}
    handle = model.act.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    y = (model(torch.from_numpy(x)) * torch.from_numpy(seed)).sum()
    handle.remove()
    (g,) = torch.autograd.grad(y, captured["a"], create_graph=True)
    (reference,) = torch.autograd.grad(g, captured["a"], grad_outputs=captured["a"].detach())
    assert np.abs(reference.numpy()).max() > 0.01 * np.abs(g.detach().numpy()).max()
    assert relative_error(ours, reference.numpy()) <= HVP_TOL

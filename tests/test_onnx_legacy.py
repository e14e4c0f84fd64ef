"""Old and odd ONNX files: IR 3 (weights listed as graph inputs), opsets 7–23, ``Upsample``, external data.

The files are built here with ``onnx.helper`` (a conv net with an upsampling between the explained layer and the
scores). Each one must export, pass the export's float64 finite-difference check, and give the original file's
outputs (onnxruntime on the file as written); the gradients also equal PyTorch autograd on the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxcam_export import onnx_upgrade
from onnxcam_export.api import export_onnx_file
from onnxcam_export.onnx_upgrade import UpgradeError
from torch.nn import functional as F

from onnxcam import contract

QUIET = {"log": lambda _: None}
LAYER = "r1"


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
        "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
        "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
        "b2": rng.standard_normal(8).astype(np.float32) * 0.1,
        "fw": rng.standard_normal((5, 8)).astype(np.float32),
        "fb": rng.standard_normal(5).astype(np.float32),
    }


def legacy_model(opset: int, ir_version: int, upsample: str | None, batch: int = 1) -> onnx.ModelProto:
    """conv → relu (``r1``) → maxpool → Upsample/Resize ×2 (``upsample`` mode; none: Identity) → conv → relu → GAP →
    Gemm; weights listed as graph inputs too for IR 3; fixed ``batch``."""
    inits = weights()
    up: onnx.NodeProto
    if upsample is None:
        up = helper.make_node("Identity", ["p1"], ["u1"])
    elif opset < 9:
        up = helper.make_node("Upsample", ["p1"], ["u1"], scales=[1.0, 1.0, 2.0, 2.0], mode=upsample)
    else:
        inits["scales"] = np.array([1, 1, 2, 2], np.float32)
        up = helper.make_node("Upsample" if opset == 9 else "Resize", ["p1", "scales"], ["u1"], mode=upsample)
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], [LAYER]),
        helper.make_node("MaxPool", [LAYER], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        up,
        helper.make_node("Conv", ["u1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["prob"], transB=1),
    ]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 16, 16])]
    if ir_version <= 3:
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    output = helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 5])
    graph = helper.make_graph(nodes, "legacy", inputs, [output], tensors)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def torch_reference(x: np.ndarray, upsample: str | None, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ``∂ scores[target] / ∂ r1`` in float64 PyTorch (asymmetric upsampling written out)."""
    w = {k: torch.from_numpy(v).double() for k, v in weights().items()}
    r1 = F.relu(F.conv2d(torch.from_numpy(x).double(), w["w1"], w["b1"], padding=1)).requires_grad_(True)
    p1 = F.max_pool2d(r1, 2)
    if upsample == "nearest":
        u1 = p1.repeat_interleave(2, 2).repeat_interleave(2, 3)
    elif upsample == "linear":  # x_in = x_out / 2, the last sample clamped: Upsample's and Resize-10's coordinates
        u1 = _asymmetric_linear(_asymmetric_linear(p1, 2), 3)
    else:
        u1 = p1
    r2 = F.relu(F.conv2d(u1, w["w2"], w["b2"], padding=1))
    scores = r2.mean((2, 3)) @ w["fw"].T + w["fb"]
    (grad,) = torch.autograd.grad(scores[:, target].sum(), r1)
    return scores.detach().numpy(), grad.numpy()


def _asymmetric_linear(t: torch.Tensor, axis: int) -> torch.Tensor:
    n = t.shape[axis]
    pos = torch.arange(2 * n, dtype=torch.float64) / 2
    low = pos.floor().long().clamp(max=n - 1)
    high = (low + 1).clamp(max=n - 1)
    frac = (pos - low).reshape([-1 if d == axis else 1 for d in range(t.dim())])
    return t.index_select(axis, low) * (1 - frac) + t.index_select(axis, high) * frac


def original_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]


CASES = [
    (7, 3, "nearest", False),
    (8, 3, "linear", False),
    (9, 4, "linear", False),
    (9, 4, "nearest", False),
    (10, 5, "linear", False),
    (23, 11, None, False),
    (8, 3, "nearest", True),
    (23, 11, None, True),
]


@pytest.mark.parametrize(
    ("opset", "ir_version", "upsample", "external"),
    CASES,
    ids=[f"opset{o}-ir{i}-{u}" + ("-external-data" if e else "") for o, i, u, e in CASES],
)
def test_old_files_export_and_explain_the_model_they_hold(
    tmp_path: Path, opset: int, ir_version: int, upsample: str | None, external: bool
) -> None:
    source = tmp_path / "model" / "legacy.onnx"
    source.parent.mkdir()
    onnx.save(
        legacy_model(opset, ir_version, upsample),
        str(source),
        save_as_external_data=external,
        location="legacy.data",
        size_threshold=0,
    )
    assert (source.parent / "legacy.data").exists() == external
    _, report = export_onnx_file(source, tmp_path / "e.onnx", [LAYER], **QUIET)
    assert report is not None and report.worst <= 1e-6
    x = np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    names = [contract.SCORES, contract.gradient_name(LAYER)]
    scores, grad = session.run(names, {contract.INPUT: x, contract.TARGET: np.array([3], np.int64)})
    np.testing.assert_allclose(scores, original_outputs(source, x), rtol=1e-5, atol=1e-5)
    ref_scores, ref_grad = torch_reference(x, upsample, 3)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-4 * float(np.abs(ref_grad).max()))


def test_an_upgrade_that_would_change_the_model_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without restoring Upsample's asymmetric coordinates the upgraded graph computes something else: refused."""
    monkeypatch.setattr(onnx_upgrade, "_restore_semantics", lambda _model: None)
    onnx.save(legacy_model(9, 4, "linear"), str(tmp_path / "m.onnx"))
    with pytest.raises(UpgradeError, match=r"upgrading opset 9 → 18 changes the model's output \(relative difference"):
        export_onnx_file(tmp_path / "m.onnx", None, [LAYER], verify=False, **QUIET)


def test_upgrade_of_a_fixed_batch_file_runs_it_at_its_batch(tmp_path: Path) -> None:
    """A file with a fixed batch of 2 at opset 13: the upgrade's check feeds it 2 images (a batch of 1 made
    onnxruntime refuse the input, reported as "cannot run the graph"), and the upgraded graph computes the same."""
    model = legacy_model(13, 7, None, batch=2)
    onnx.save(model, str(tmp_path / "m.onnx"))
    upgraded = onnx_upgrade.upgrade(model, 18)
    onnx.save(upgraded, str(tmp_path / "up.onnx"))
    x = np.random.default_rng(2).random((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(original_outputs(tmp_path / "up.onnx", x), original_outputs(tmp_path / "m.onnx", x))

"""One explainer file for any runtime (issue 16): standard ONNX ops only, and the same outputs in onnxruntime CPU,
OpenVINO, onnxruntime's mobile ``.ort`` format, and the CUDA / TensorRT execution providers (skipped without a GPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from small_models import export_gapnet
from test_in_graph import METHODS, default_domain_ops

from onnxcam import contract

#: Largest difference allowed between runtimes: the maps are in [0, 1]; activations and gradients relative to their
#: largest value (kernels sum in other orders: ~1e-6 seen for OpenVINO and .ort, float32 rounding).
CPU_TOLERANCE = 1e-5
GPU_TOLERANCE = 1e-4  # cuDNN / TensorRT pick other convolution algorithms (TF32 off)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GapNet (two layers, fused) with every in-graph method, input gradients and head graphs: the whole file."""
    path = tmp_path_factory.mktemp("any_runtime") / "gapnet.onnx"
    return export_gapnet(path, ("body.1", "body.3"), in_graph=list(METHODS), input_gradients=("standard", "guided"))


@pytest.fixture(scope="module")
def feeds() -> dict[str, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((3, 3, 32, 32)).astype(np.float32)
    return {contract.INPUT: x, contract.TARGET: np.array([-1, 4, -1], np.int64)}


@pytest.fixture(scope="module")
def reference(exported: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """onnxruntime CPU with the default switches: scores, activations, gradients and every ``cam:<method>``."""
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return {n: v for n, v in zip(names, session.run(names, feeds), strict=True) if v.size}


def assert_same(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], tolerance: float) -> None:
    assert {contract.cam_name(m) for m in METHODS} <= set(ours)
    for name, ref in reference.items():
        assert ours[name].shape == ref.shape, name
        scale = 1.0 if name.startswith(contract.CAM_PREFIX) else max(float(np.abs(ref).max()), 1e-12)
        assert float(np.abs(ours[name] - ref).max()) <= tolerance * scale, name


def test_every_node_is_standard_onnx(exported: Path) -> None:
    model = onnx.load(str(exported))
    ops = default_domain_ops(model.graph)
    assert sum(op == "If" for _, op in ops) >= len(METHODS) + 3  # gradients, input gradients, heads, maps
    foreign = sorted({f"{d}::{op}" for d, op in ops if d not in ("", "ai.onnx")})
    assert not foreign, f"non-standard ops: {foreign}"
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}


def test_openvino_gives_the_same_outputs(
    exported: Path, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray]
) -> None:
    """OpenVINO reads the file as is (``If`` on a bool input included). It treats inputs that have a default (the
    ``compute:`` switches, ``seed``, ``head:``) as constants: only ``input`` and ``target`` can be fed, the
    switches keep their defaults — gradients and maps on, input gradients and heads off. On CPUs with bfloat16
    units (AMX, AVX512-BF16) OpenVINO computes in bfloat16 unless told otherwise (scores off by ~2e-3 relative):
    ``INFERENCE_PRECISION_HINT: f32`` keeps float32."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(exported)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert {i.get_any_name() for i in compiled.inputs} == {contract.INPUT, contract.TARGET}
    values = compiled(feeds)
    ours = {}
    for port in compiled.outputs:
        name = next((n for n in port.get_names() if n in reference), None)
        if name is not None:
            ours[name] = values[port]
    assert_same(ours, reference, CPU_TOLERANCE)


def test_ort_mobile_format_converts_and_runs(
    exported: Path, feeds: dict[str, np.ndarray], reference: dict[str, np.ndarray], tmp_path: Path
) -> None:
    tool = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(exported)]
    args = ["--output_dir", str(tmp_path), "--optimization_style", "Fixed"]
    done = subprocess.run([*tool, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    session = ort.InferenceSession(str(tmp_path / "gapnet.ort"), providers=["CPUExecutionProvider"])
    names = list(reference)
    assert_same(dict(zip(names, session.run(names, feeds), strict=True)), reference, CPU_TOLERANCE)
    off = {**feeds, contract.switch_name(contract.cam_name("gradcam")): np.array(False)}
    assert session.run([contract.cam_name("gradcam")], off)[0].shape == (0, 32, 32)  # switches still work


@pytest.mark.parametrize(
    ("provider", "options"),
    [("CUDAExecutionProvider", {"use_tf32": "0"}), ("TensorrtExecutionProvider", {"trt_fp16_enable": "False"})],
    ids=["cuda", "tensorrt"],
)
def test_gpu_providers_give_the_same_outputs(
    provider: str,
    options: dict[str, str],
    exported: Path,
    feeds: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
) -> None:
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not in this onnxruntime build (install onnxruntime-gpu on a GPU machine)")
    try:
        session = ort.InferenceSession(str(exported), providers=[(provider, options), "CPUExecutionProvider"])
    except Exception as exc:  # a build with the provider but no usable GPU or driver: nothing to test here
        pytest.skip(f"{provider} cannot start here: {str(exc).splitlines()[0]}")
    if session.get_providers()[0] != provider:
        pytest.skip(f"{provider} fell back to CPU (no usable GPU or driver)")
    names = list(reference)
    assert_same(dict(zip(names, session.run(names, feeds), strict=True)), reference, GPU_TOLERANCE)

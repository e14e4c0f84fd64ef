"""Check an explainer graph before it is written: measuring it against a reference (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam import contract

from .errors import ExportError


class VerificationError(ExportError):
    """The explainer graph disagrees with the reference beyond tolerance."""


@dataclass(frozen=True)
class Report:
    """Worst relative error ``max|ours − ref| / max|ref|`` per checked output."""

    errors: dict[str, float]

    @property
    def worst(self) -> float:
        return max(self.errors.values())

    def summary(self) -> str:
        worst_name = max(self.errors, key=self.errors.__getitem__)
        return f"max relative error {self.worst:.2e} ({worst_name}) over {len(self.errors)} outputs"


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours − ref| / max|ref|`` (absolute when ``ref`` is all zeros)."""
    scale = float(np.abs(ref).max())
    return float(np.abs(ours - ref).max()) / (scale if scale > 0 else 1.0)


def session_for(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(ours: dict[str, np.ndarray], refs: Sequence[dict[str, np.ndarray]]) -> Report:
    """Per output, the worst over images of the error vs the closest reference.

    Several references (float32 and float64 autograd) exist because a ReLU pre-activation within rounding of 0 has
    two valid gradients; an image matching either is right. ``target_used`` must match the first exactly.
    """
    first = refs[0]
    if not np.array_equal(ours[contract.TARGET_USED], first[contract.TARGET_USED]):
        raise VerificationError(
            f"target_used {ours[contract.TARGET_USED].tolist()} != reference {first[contract.TARGET_USED].tolist()}"
        )
    errors = {
        key: max(min(relative_error(ours[key][i], ref[key][i]) for ref in refs) for i in range(len(value)))
        for key, value in first.items()
        if key != contract.TARGET_USED
    }
    return Report(errors)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = session_for(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _perturbable(forward: onnx.ModelProto, tap: str) -> onnx.ModelProto:
    """``forward`` with an extra input ``delta`` added to ``tap`` before anything downstream reads it."""
    model = onnx.ModelProto()
    model.CopyFrom(forward)
    shifted = tap + "/shifted"
    for node in model.graph.node:
        node.input[:] = [shifted if i == tap else i for i in node.input]
    model.graph.node.append(onnx.helper.make_node("Add", [tap, "delta"], [shifted], name="onnxcam/delta"))
    model.graph.input.append(onnx.helper.make_tensor_value_info("delta", onnx.TensorProto.FLOAT, None))
    del model.graph.output[1:]
    onnx.checker.check_model(model)
    return model


def verify_finite_differences(
    explainer: onnx.ModelProto,
    forward: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float = 1e-2,
    batch: int = 2,
    directions: int = 3,
    seed: int = 0,
) -> Report:
    """Directional central differences of ``scores[n, t_n]`` w.r.t. each tapped map vs ``⟨gradient, v⟩``.

    ``(f(A + εv) − f(A − εv)) / 2ε ≈ ⟨∂f/∂A, v⟩`` for random ``v``; float32 forward passes, so the tolerance is looser
    than for the autograd check. Error per layer: ``max_n |fd_n − dot_n| / max_n |dot_n|``.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.array([contract.TOP1, 0, 1][:batch], np.int64)
    out = run(explainer, {contract.INPUT: x, contract.TARGET: target})
    rows = np.arange(batch)
    errors: dict[str, float] = {}
    for layer in layers:
        tap = contract.activation_name(layer)
        activation, gradient = out[tap], out[contract.gradient_name(layer)]
        model = _perturbable(forward, tap)
        worst = 0.0
        for _ in range(directions):
            v = rng.standard_normal(activation.shape).astype(np.float32)
            eps = np.float32(1e-3 * max(float(np.abs(activation).max()), 1e-3))
            f_plus, f_minus = (
                run(model, {contract.INPUT: x, "delta": sign * eps * v})[contract.SCORES].reshape(batch, -1)
                for sign in (1, -1)
            )
            used = out[contract.TARGET_USED]
            fd = (f_plus[rows, used].astype(np.float64) - f_minus[rows, used]) / (2 * eps)
            dot = (gradient.astype(np.float64) * v).reshape(batch, -1).sum(1)
            worst = max(worst, relative_error(fd, dot))
        errors[contract.gradient_name(layer)] = worst
    report = Report(errors)
    if report.worst > tolerance:
        raise VerificationError(f"explainer graph is wrong: {report.summary()} > tolerance {tolerance:.0e}")
    return report

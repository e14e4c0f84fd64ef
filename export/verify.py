"""Check an explainer graph before it is written: measuring it against a reference (no torch here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam import contract

from .autodiff.graph_info import GraphInfo
from .errors import ExportError
from .float64 import cut_after, evaluate_float64


class VerificationError(ExportError):
    """The explainer graph disagrees with the reference beyond tolerance."""


@dataclass(frozen=True)
class Report:
    """Relative error ``max|ours − ref| / max|ref|`` per checked output and per image.

    A verdict uses the median image: float gradients of ReLU/max-pool networks jump where a value lies within
    rounding of a kink, so one image in a batch may legitimately differ, while a wrong rule spoils every image.
    """

    errors: dict[str, tuple[float, ...]]

    @property
    def worst(self) -> float:
        return max(max(e) for e in self.errors.values())

    @property
    def typical(self) -> float:
        """The largest, over outputs, of the median error over images."""
        return max(float(np.median(e)) for e in self.errors.values())

    def summary(self) -> str:
        name = max(self.errors, key=lambda k: max(self.errors[k]))
        return (
            f"relative error {self.typical:.2e} (median image), worst {self.worst:.2e} ({name}), "
            f"{len(self.errors)} outputs"
        )


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours − ref| / max|ref|`` (absolute when ``ref`` is all zeros)."""
    scale = float(np.abs(ref).max())
    return float(np.abs(ours - ref).max()) / (scale if scale > 0 else 1.0)


def session_for(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(ours: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> Report:
    """Relative error of every output of ``ref`` (``target_used`` must match exactly)."""
    if not np.array_equal(ours[contract.TARGET_USED], ref[contract.TARGET_USED]):
        raise VerificationError(
            f"target_used {ours[contract.TARGET_USED].tolist()} != reference {ref[contract.TARGET_USED].tolist()}"
        )
    return Report(
        {
            k: tuple(relative_error(ours[k][i], v[i]) for i in range(len(v)))
            for k, v in ref.items()
            if k != contract.TARGET_USED
        }
    )


def check(report: Report, tolerance: float) -> Report:
    if report.typical > tolerance:
        raise VerificationError(f"explainer graph is wrong: {report.summary()} > tolerance {tolerance:.0e}")
    return report


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = session_for(model)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def fast_kernels() -> list:
    """Torch-backed float64 Conv/pooling kernels when torch is installed (≈100× faster), else none."""
    try:
        from .float64_torch import OPS
    except ImportError:
        return []
    return OPS


def verify_finite_differences(
    explainer: onnx.ModelProto,
    layers: Sequence[str],
    input_shape: tuple[int, ...],
    tolerance: float = 1e-4,
    batch: int = 2,
    directions: int = 2,
    seed: int = 0,
) -> Report:
    """Directional central differences of ``scores[n, t_n]`` w.r.t. each tapped map (and the input, when the graph
    has the standard input gradient) vs ``⟨gradient, v⟩``.

    The part of the explainer after the layer (forward head, seed and backward) runs in float64 under
    ``onnx.reference`` from the float32 map ``A`` that onnxruntime computed, so the check sees the graph's mathematics,
    not float32 rounding: with ``ε`` = 1e-7 of the map's scale no step crosses a ReLU kink or a max-pool near-tie.
    ``(f(A + εv) − f(A − εv)) / 2ε`` is compared with ``⟨G(A), v⟩`` for random ``v``, 0 where ``A`` is exactly 0
    (post-ReLU zeros tie inside pooling windows, where no derivative exists). Error of image ``n``:
    ``|fd_n − dot_n| / max_m |dot_m|``, worst over directions.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape)).astype(np.float32)
    target = np.array([contract.TOP1, 0, 1][:batch], np.int64)
    rows = np.arange(batch)
    errors: dict[str, tuple[float, ...]] = {}
    pairs = [(contract.activation_name(layer), contract.gradient_name(layer)) for layer in layers]
    if contract.INPUT_GRADIENT in {o.name for o in explainer.graph.output}:
        pairs.append((contract.INPUT, contract.INPUT_GRADIENT))
    for tap, grad in pairs:
        after, frozen = cut_after(explainer, tap, [contract.SCORES, contract.TARGET_USED, grad])
        probe = onnx.ModelProto()
        probe.CopyFrom(explainer)
        info = GraphInfo(explainer)
        probe.graph.output.extend(
            onnx.helper.make_tensor_value_info(f, onnx.helper.np_dtype_to_tensor_dtype(info.dtype(f)), info.shape(f))
            for f in frozen
            if f != contract.TARGET
        )
        out = {**run(probe, {contract.INPUT: x, contract.TARGET: target}), contract.INPUT: x}
        fixed = {f: target if f == contract.TARGET else out[f] for f in frozen}
        activation = out[tap].astype(np.float64)

        def evaluate(a: np.ndarray) -> dict[str, np.ndarray]:
            return evaluate_float64(after, {tap: a, **fixed}, fast_kernels())  # noqa: B023 - used within this iteration

        at = evaluate(activation)
        used = at[contract.TARGET_USED]
        worst = np.zeros(batch)
        for _ in range(directions):
            v = rng.standard_normal(activation.shape) * (activation != 0)
            eps = 1e-7 * max(float(np.abs(activation).max()), 1e-6)
            f_plus, f_minus = (evaluate(activation + sign * eps * v)[contract.SCORES] for sign in (1, -1))
            fd = (f_plus[rows, used] - f_minus[rows, used]) / (2 * eps)
            dot = (at[grad] * v).reshape(batch, -1).sum(1)
            worst = np.maximum(worst, np.abs(fd - dot) / max(float(np.abs(dot).max()), 1e-30))
        errors[grad] = tuple(worst.tolist())
    return check(Report(errors), tolerance)

"""Check one gradient rule (or a tiny graph) against ``torch.autograd``.

``check_vjp`` builds an ONNX graph from ``nodes``, asks the engine for the VJP of ``output`` with respect to the
``wrt`` inputs under a random seed ``ḡ``, runs it on onnxruntime (CPU), and compares with
``torch.autograd.grad(torch_fn(...), wrt, ḡ)``. Error measure: ``max|ours − ref| / max|ref|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from onnxcam_export.autodiff.engine import differentiate
from onnxcam_export.verify import relative_error

OPSET = 18


def run_vjp(
    nodes: Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    wrt: Sequence[str],
    output: str,
    seed: np.ndarray,
    constants: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Forward output and the VJPs for ``wrt``, computed by the ONNX backward graph on onnxruntime."""

    def vi(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)

    graph = helper.make_graph(
        list(nodes),
        "rule_check",
        [vi(k, v) for k, v in inputs.items()] + [vi("seed", seed)],
        [vi(output, seed)],
        initializer=[numpy_helper.from_array(v, k) for k, v in (constants or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    backward = differentiate(model, list(wrt), output, "seed")
    graph = model.graph  # make_model copied it
    graph.node.extend(backward.nodes)
    graph.initializer.extend(backward.initializers)
    for name in wrt:
        graph.output.append(vi(backward.grads[name], inputs[name]))
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out, *grads = session.run(None, {**inputs, "seed": seed})
    return out, grads


def check_vjp(
    nodes: onnx.NodeProto | Sequence[onnx.NodeProto],
    inputs: dict[str, np.ndarray],
    wrt: Sequence[str],
    torch_fn: Callable[..., torch.Tensor],
    output: str | None = None,
    constants: dict[str, np.ndarray] | None = None,
    tol: float = 1e-5,
    rng: np.random.Generator | None = None,
) -> float:
    """Assert the ONNX VJP equals torch autograd within ``tol`` (relative); returns the worst error.

    ``torch_fn`` receives the ``inputs`` as tensors, in order, and returns the output tensor.
    """
    nodes = [nodes] if isinstance(nodes, onnx.NodeProto) else list(nodes)
    output = output or nodes[-1].output[0]
    tensors = {k: torch.tensor(v, requires_grad=k in wrt) for k, v in inputs.items()}
    ref_out = torch_fn(*tensors.values())
    rng = rng or np.random.default_rng(0)
    seed = rng.standard_normal(ref_out.shape).astype(ref_out.detach().numpy().dtype)
    ref_grads = torch.autograd.grad(ref_out, [tensors[k] for k in wrt], torch.tensor(seed), allow_unused=True)
    out, grads = run_vjp(nodes, inputs, wrt, output, seed, constants)
    worst = relative_error(out, ref_out.detach().numpy())
    assert worst <= tol, f"forward differs from torch: {worst:.2e}"
    for name, ours, ref in zip(wrt, grads, ref_grads, strict=True):
        ref_np = np.zeros_like(ours) if ref is None else ref.numpy()
        assert ours.shape == ref_np.shape, f"∂/∂{name}: shape {ours.shape} != {ref_np.shape}"
        err = relative_error(ours, ref_np)
        assert err <= tol, f"∂/∂{name}: relative error {err:.2e} > {tol:.0e}"
        worst = max(worst, err)
    return worst

"""Verification of the optional parts ``--bias-gradients`` (FullGrad) and ``--hvp`` (ShapleyCAM) before the file is
written: float64 central differences of the graph's own function (:func:`~.verify.settled_slopes`), for PyTorch and
ONNX sources alike.

* ``bias_gradient:<i>`` ``= b ⊙ ∂y/∂z`` (``z`` the biased node's output): ``⟨b ⊙ ∂y/∂z, v⟩ = ⟨∂y/∂z, b ⊙ v⟩``, the
  derivative of ``y`` along ``b ⊙ v`` at ``z`` — exact, whatever ``b`` (a zero bias gives a zero term on both
  sides). ``bias_gradient:input`` the same with ``x`` for ``b``. ``b`` is recomputed from the node
  (:func:`~.bias_gradients.node_bias`), so a term paired with the wrong node is caught; ``b``'s definition itself
  (pytorch-grad-cam's ``get_bias_data``) is checked by the FullGrad test against pytorch-grad-cam.
* ``hvp:<layer>`` ``= H·A``: ``⟨H·A, w⟩ = d/dε ⟨∂y/∂A (A + εA), w⟩`` at ``ε = 0`` for a random ``w``: the layer's
  gradient output (itself verified against the reference) evaluated in float64 with the map scaled. A piecewise
  linear network gives ``H·A = 0`` on both sides; where a step crosses a ReLU or max-pool kink the differences do not
  settle and that image is left out (:func:`~.verify.settled_slopes`), as for the default outputs.

Errors are ``|fd − ⟨ours, v⟩| / max_n |⟨ours, v⟩|`` (for ``H·A``, at least 1e-3 of ``max_n Σ|∂y/∂A ⊙ w|``, so an exact
zero product is measured against the gradient's size).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from onnxcam import contract

from .autodiff.graph_info import GraphInfo
from .bias_gradients import node_bias
from .float64 import CouldNotVerify, switched_on
from .source_batch import check_batch
from .verify import Report, after_tap, check, directional_errors, picked_scores, settled_slopes

#: The export option behind each switch, for the verdict.
OPTIONS = {contract.BIAS_SWITCH: "--bias-gradients", contract.HVP_SWITCH: "--hvp"}
_KEEP = [contract.SCORES, contract.TARGET_USED]


def verify_switched(
    explainer: onnx.ModelProto,
    switches: Sequence[str],
    tolerance: float = 1e-4,
    batch: int = 2,
    directions: int = 2,
    seed: int = 0,
) -> Report:
    """Each output behind ``switches`` (:data:`OPTIONS`) vs float64 finite differences on ``batch`` random images
    (targets top-1, 0); :class:`~.verify.VerificationError` naming the output and the option when one image of one
    output is off by more than ``tolerance``, :class:`CouldNotVerify` when an output's differences settle for no
    image."""
    metadata = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props})
    model = switched_on(explainer, also=switches)
    batch = check_batch(explainer, batch)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, metadata.preprocess.channels, *metadata.preprocess.input_size)).astype(np.float32)
    feeds = {contract.INPUT: x, contract.TARGET: np.array([contract.TOP1, 0, 1][:batch], np.int64)}
    errors: dict[str, tuple[float, ...]] = {}
    if contract.BIAS_SWITCH in switches:
        errors.update(_bias_errors(model, metadata.bias_gradients, feeds, rng, tolerance, directions))
    if contract.HVP_SWITCH in switches:
        errors.update(_hvp_errors(model, metadata.hvp, feeds, rng, tolerance, directions))

    def where(name: str) -> str:
        bias = name.startswith(contract.BIAS_GRADIENT_PREFIX)
        option = OPTIONS[contract.BIAS_SWITCH if bias else contract.HVP_SWITCH]
        return f" (the {option} part; export without {option})"

    return check(Report(errors), tolerance, where)


def _bias_errors(
    model: onnx.ModelProto,
    biased: Sequence[str],
    feeds: dict[str, np.ndarray],
    rng: np.random.Generator,
    tolerance: float,
    directions: int,
) -> dict[str, tuple[float, ...]]:
    """``bias_gradient:*`` against the derivative of ``y`` along ``m ⊙ v`` at the tensor ``m`` multiplies."""
    info = GraphInfo(model)
    nodes = {node.name or node.output[0]: node for node in model.graph.node}
    terms = [(contract.bias_gradient_name("input"), contract.INPUT, feeds[contract.INPUT].astype(np.float64))]
    for i, name in enumerate(biased):
        bias = node_bias(nodes[name], info)
        terms.append((contract.bias_gradient_name(str(i)), nodes[name].output[0], bias.reshape(1, -1, 1, 1)))  # type: ignore[union-attr]
    errors = {}
    for output, tap, multiplier in terms:
        ours = after_tap(model, tap, feeds, [*_KEEP, output])
        scores, z, _ = after_tap(model, tap, feeds, _KEEP)

        def along(a: np.ndarray) -> dict[str, np.ndarray]:
            return scores(z + multiplier * (a - z))  # noqa: B023 - used within this iteration

        at = ours[0](ours[1])
        used = at[contract.TARGET_USED]
        worst, unsettled = directional_errors(
            along,
            z,
            at[output],
            lambda out: picked_scores(out[contract.SCORES], used),  # noqa: B023 - used within this iteration
            rng,
            tolerance,
            directions,
        )
        errors[output] = _settled(output, worst, unsettled)
    return errors


def _hvp_errors(
    model: onnx.ModelProto,
    layers: Sequence[str],
    feeds: dict[str, np.ndarray],
    rng: np.random.Generator,
    tolerance: float,
    directions: int,
) -> dict[str, tuple[float, ...]]:
    """``hvp:<layer>`` against the derivative of ``⟨∂y/∂A, w⟩`` along ``A``."""
    errors = {}
    for layer in layers:
        output, grad = contract.hvp_name(layer), contract.gradient_name(layer)
        evaluate, a, _ = after_tap(model, contract.activation_name(layer), feeds, [grad, output])
        gradient = after_tap(model, contract.activation_name(layer), feeds, [grad])[0]
        at = evaluate(a)
        batch = len(a)
        worst, unsettled = np.zeros(batch), np.zeros(batch, bool)
        for _ in range(directions):
            w = rng.standard_normal(a.shape)
            dot = (at[output] * w).reshape(batch, -1).sum(1)
            floor = 1e-3 * float(np.abs(at[grad] * w).reshape(batch, -1).sum(1).max())
            scale = np.full(batch, max(float(np.abs(dot).max()), floor, 1e-300))

            def objective(t: np.ndarray, a: np.ndarray = a, w: np.ndarray = w) -> np.ndarray:
                scaled = a * (1 + t.reshape(-1, *[1] * (a.ndim - 1)))
                return (gradient(scaled)[grad] * w).reshape(batch, -1).sum(1)  # noqa: B023 - this iteration

            fd = settled_slopes(objective, objective(np.zeros(batch)), scale, tolerance / 4)
            unsettled |= np.isnan(fd)
            worst = np.maximum(worst, np.where(np.isnan(fd), 0.0, np.abs(fd - dot) / scale))
        errors[output] = _settled(output, worst, int(unsettled.sum()))
    return errors


def _settled(output: str, worst: np.ndarray, unsettled: int) -> tuple[float, ...]:
    """``worst`` per image, or :class:`CouldNotVerify` when no image settled."""
    if unsettled == len(worst):
        raise CouldNotVerify(f"finite differences for {output} settle at no step (kinks at every scale)")
    return tuple(worst.tolist())

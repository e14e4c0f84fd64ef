"""Refuse a unit layer no explained layer can serve: a layer after the unit layer does not influence the unit, so its
gradient is zero for every unit target and the runtime refuses every unit map there."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from onnxcam import contract

from . import large_protos
from .errors import ExportError
from .source_batch import check_batch


def dead_layers(explainer: onnx.ModelProto, metadata: contract.Metadata, unit: contract.Unit) -> list[str]:
    """The explained layers whose ``gradient:<layer>`` is all zero for a random non-zero ``unit_seed`` on two random
    images: the layers after the unit layer."""

    rng = np.random.default_rng(0)
    size = metadata.preprocess.input_size
    batch = check_batch(explainer)
    feeds = {
        contract.INPUT: rng.standard_normal((batch, metadata.preprocess.channels, *size)).astype(np.float32),
        contract.TARGET: np.full(batch, contract.TOP1),
        contract.UNIT_SEED: rng.standard_normal((batch, *unit.shape)).astype(np.float32),
    }
    session = large_protos.session(explainer)  # errors only: the optional inputs' defaults are initializers
    grads = session.run([contract.gradient_name(layer) for layer in metadata.layers], feeds)
    return [layer for layer, g in zip(metadata.layers, grads, strict=True) if not np.any(g)]


def refuse_dead_unit_layer(explainer: onnx.ModelProto, metadata: contract.Metadata, log: Callable[[str], None]) -> None:
    """Raise :class:`ExportError` when every explained layer lies after the unit layer; log those that do when only
    some do (unit targets then work at the others)."""
    unit = contract.Metadata.from_props({p.key: p.value for p in explainer.metadata_props}).unit
    dead = dead_layers(explainer, metadata, unit) if unit is not None else []
    if not dead:
        return
    if len(dead) == len(metadata.layers):
        raise ExportError(
            f"--unit-layer {unit.layer}: the explained layer(s) {', '.join(dead)} lie after it, so no unit depends "  # type: ignore[union-attr]
            "on them and every unit map would be empty; give a --layer before the unit layer, or a later --unit-layer"
        )
    log(f"note: {', '.join(dead)} lie(s) after the unit layer {unit.layer}: unit targets are explained at the others")  # type: ignore[union-attr]

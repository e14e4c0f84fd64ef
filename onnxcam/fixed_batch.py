"""Running an explainer graph that takes exactly ``B`` images per run (metadata ``onnxcam.fixed_batch``).

Such a graph comes from a source file exported with a fixed batch that its graph folds into other shapes (Swin's
windows, attention reshapes), which no rewrite makes dynamic. :class:`FixedBatchSession` wraps its onnxruntime session
so every caller keeps feeding batches of any size: the per-image feeds are cut into chunks of ``B`` rows, the last
chunk padded with copies of its last row, and the outputs' padding rows dropped before the chunks are joined.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from . import contract

#: Inputs with one row per image; ``head:<layer>`` inputs have one row per map.
_PER_IMAGE = (contract.INPUT, contract.TARGET, contract.SEED, contract.UNIT_SEED)


def per_row(name: str) -> bool:
    """Whether input ``name`` holds one row per image (or per head map) of the run."""
    return name in _PER_IMAGE or name.startswith(contract.HEAD_INPUT_PREFIX)


def describe(batch: int | None) -> str:
    """One line for ``onnxcam info``: the images per run."""
    if batch is None:
        return "batch: any (images are run together, up to 64 at a time)"
    each = "one image per run" if batch == 1 else f"{batch} images per run, the last run padded"
    return f"batch: fixed at {batch} (the source file folds its batch into other shapes): {each}"


def _padded(value: np.ndarray, start: int, batch: int) -> np.ndarray:
    """Rows ``start … start + batch`` of ``value``, padded with copies of its last row (a valid image or seed)."""
    chunk = value[start : start + batch]
    return np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)]) if len(chunk) < batch else chunk


class FixedBatchSession:
    """An onnxruntime session over a graph at fixed batch ``batch`` that runs feeds of any number of rows.

    ``run(names, feeds)``: the rows of the per-row inputs (:func:`per_row`; all of the same count ``M``) go in
    chunks of ``batch``; a per-row input fed empty while others have rows (a head run's ``input``: the network before
    the layer is not read) is fed ``batch`` rows of zeros. Outputs with ``batch`` rows are cut to the real rows and
    joined (``[M, …]``); empty outputs (parts switched off) stay empty. Raises ``ValueError`` (one line) for feeds
    whose per-row inputs disagree on ``M``, or for box-axis inputs (a fixed-batch graph has no box axis).
    Everything else is delegated to the wrapped session.
    """

    def __init__(self, session: ort.InferenceSession, batch: int) -> None:
        self._session, self.batch = session, batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def run(self, names: Sequence[str] | None, feeds: Mapping[str, np.ndarray], *args: Any) -> list[np.ndarray]:
        rows = {k: len(v) for k, v in feeds.items() if per_row(k)}
        counts = {n for n in rows.values() if n}
        if any(k.startswith(contract.BOX_STATE_INPUT_PREFIX) or k == contract.BOX_ROWS for k in feeds):
            raise ValueError(f"this graph runs {self.batch} image(s) at a time (fixed batch) and has no box axis")
        if len(counts) > 1:
            raise ValueError(f"per-image inputs of one run disagree on the number of rows: {rows}")
        count = counts.pop() if counts else 0
        b = self.batch
        parts = []
        for start in range(0, max(count, 1), b):
            chunk = dict(feeds)
            for name, n in rows.items():
                value = feeds[name]
                chunk[name] = _padded(value, start, b) if n else np.zeros((b, *value.shape[1:]), value.dtype)
            real = min(b, count - start)
            outs = self._session.run(names, chunk, *args)
            parts.append([o[:real] if o.ndim and len(o) == b else o for o in outs])
        return [np.concatenate(values) if len(parts) > 1 else values[0] for values in zip(*parts, strict=True)]

"""A smoke run of the optional parts the export adds on request (``--bias-gradients``, ``--hvp``): these run once on
onnxruntime before the file is written (also under ``--no-verify``), and a part that cannot be computed for this model
is refused in one line instead of failing at explain time. Their values are verified next, by
:mod:`.verify_switched`."""

from __future__ import annotations

import numpy as np
import onnx

from onnxcam import contract

from .errors import ExportError
from .source_batch import check_batch
from .verify import session_for

#: The export option that adds each switch, for the message.
OPTIONS = {contract.BIAS_SWITCH: "--bias-gradients", contract.HVP_SWITCH: "--hvp"}


def check_switched_parts(model: onnx.ModelProto, metadata: contract.Metadata, switches: list[str]) -> None:
    """Run ``model`` on two random inputs with each of ``switches`` on; :class:`ExportError` naming the option when
    onnxruntime fails or an output is not finite."""
    if not switches:
        return
    session = session_for(model)
    batch = check_batch(model)
    shape = (batch, metadata.preprocess.channels, *metadata.preprocess.input_size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    optional = {i.name for i in [*session.get_inputs(), *session.get_overridable_initializers()]}
    for switch in switches:
        names = [o.name for o in session.get_outputs() if _under(o.name, switch)]
        feeds = {contract.INPUT: x, contract.TARGET: np.full(batch, contract.TOP1, np.int64)}
        feeds.update({name: np.array(name == switch) for name in optional if name.startswith(contract.SWITCH_PREFIX)})
        try:
            values = session.run(names, feeds)
        except Exception as exc:  # onnxruntime's message, first line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ExportError(
                f"{OPTIONS[switch]}: this model's part cannot be computed (onnxruntime: {first}); "
                f"export without {OPTIONS[switch]}"
            ) from None
        if not all(np.isfinite(v).all() for v in values):
            raise ExportError(f"{OPTIONS[switch]}: this model's part gives non-finite values; export without it")


def _under(output: str, switch: str) -> bool:
    """Whether graph output ``output`` belongs to the part behind ``switch``."""
    prefix = {contract.BIAS_SWITCH: contract.BIAS_GRADIENT_PREFIX, contract.HVP_SWITCH: contract.HVP_PREFIX}[switch]
    return output.startswith(prefix)

"""Float64 evaluation of explainer graphs for exactness checks (see ``onnxcam_export.float64_torch``)."""

from onnxcam_export.float64_torch import evaluate_float64_torch as run_float64

__all__ = ["run_float64"]

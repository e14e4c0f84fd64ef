"""Choosing the onnxruntime execution provider and session options."""

from __future__ import annotations

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CHOICES = ("auto", "cpu", "cuda")
#: CUDA provider options: TF32 off. onnxruntime enables TF32 matrix products and convolutions by default on Ampere and
#: newer GPUs (10-bit mantissa inputs, ~1e-3 relative); an explainer must give the float32 maps the CPU gives
#: (measured on an H200 with TF32 on: Grad-CAM maps 2.2e-4 away from the CPU's; off: within 1e-5).
CUDA_OPTIONS = {"use_tf32": "0"}
Provider = str | tuple[str, dict[str, str]]


class ProviderError(RuntimeError):
    """The requested execution provider cannot be used here."""


def cuda_available() -> bool:
    """True when this onnxruntime build has the CUDA execution provider (onnxruntime-gpu)."""
    return CUDA in ort.get_available_providers()


def provider_list(choice: str) -> list[Provider]:
    """``auto`` → CUDA (with :data:`CUDA_OPTIONS`) when onnxruntime-gpu offers it, else CPU; ``cpu``; ``cuda`` (error
    when unavailable). The list is onnxruntime's ``providers=`` argument."""
    if choice not in CHOICES:
        raise ProviderError(f"unknown provider '{choice}', choose one of {', '.join(CHOICES)}")
    if choice == "cpu" or (choice == "auto" and not cuda_available()):
        return [CPU]
    if not cuda_available():
        raise ProviderError(
            "provider 'cuda' asked for, but this onnxruntime has no CUDA support: pip install onnxruntime-gpu"
        )
    return [(CUDA, CUDA_OPTIONS), CPU]


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Full graph optimisation, quiet logging, ``threads`` intra-op threads (``None``: onnxruntime's default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def check_used(choice: str, used: list[str]) -> None:
    """onnxruntime silently falls back to the CPU when CUDA fails to start; an explicit ``cuda`` must not."""
    if choice == "cuda" and (not used or used[0] != CUDA):
        raise ProviderError(f"CUDA could not be initialised (session runs on {used[0] if used else 'nothing'})")

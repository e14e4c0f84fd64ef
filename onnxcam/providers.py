"""Choosing the onnxruntime execution provider and session options."""

from __future__ import annotations

import onnxruntime as ort

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
CHOICES = ("auto", "cpu", "cuda")


class ProviderError(RuntimeError):
    """The requested execution provider cannot be used here."""


def cuda_available() -> bool:
    """True when this onnxruntime build has the CUDA execution provider (onnxruntime-gpu)."""
    return CUDA in ort.get_available_providers()


def provider_list(choice: str) -> list[str]:
    """``auto`` → CUDA when onnxruntime-gpu offers it, else CPU; ``cpu``; ``cuda`` (error when unavailable)."""
    if choice not in CHOICES:
        raise ProviderError(f"unknown provider '{choice}', choose one of {', '.join(CHOICES)}")
    if choice == "cpu" or (choice == "auto" and not cuda_available()):
        return [CPU]
    if not cuda_available():
        raise ProviderError(
            "provider 'cuda' asked for, but this onnxruntime has no CUDA support: pip install onnxruntime-gpu"
        )
    return [CUDA, CPU]


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

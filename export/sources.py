"""Resolve the SOURCE argument of ``onnxcam export`` into a PyTorch module (or an ONNX file path)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ExportError

if TYPE_CHECKING:
    from torch import nn


class SourceError(ExportError):
    """SOURCE cannot be turned into a model."""


def is_onnx(source: str) -> bool:
    return source.lower().endswith(".onnx")


def load_torchvision(name: str, weights: str | Path | None = None) -> nn.Module:
    """``torchvision.models.<name>(weights=None)``, then an optional state dict (``torch.load(weights_only=True)``)."""
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models))[:8])
        raise SourceError(f"torchvision has no model '{name}' (e.g. {known}, …)") from None
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = builder(weights=None, **kwargs)
    if weights is not None:
        load_state(model, weights)
    return model


def load_state(model: nn.Module, weights: str | Path) -> None:
    """Load a state dict saved with ``torch.save`` (tensors only: ``weights_only=True``, no pickled code)."""
    import torch

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SourceError(f"cannot load weights '{weights}': {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise SourceError(f"weights '{weights}' do not fit the model: {str(exc).splitlines()[0]}") from None


def load_callable(spec: str) -> nn.Module:
    """``path/to/file.py:fn`` or ``package.module:fn``; ``fn()`` must return an ``nn.Module``."""
    from torch import nn

    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise SourceError(f"'{spec}' is not torchvision:<name>, <module or file.py>:<callable> or a .onnx file")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise SourceError(f"no such file: {target}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise SourceError(f"cannot import '{target}': {exc}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise SourceError(f"'{target}' has no attribute '{attr}'")
    model = fn() if callable(fn) and not isinstance(fn, nn.Module) else fn
    if not isinstance(model, nn.Module):
        raise SourceError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_module(source: str, weights: str | Path | None = None) -> nn.Module:
    """The PyTorch model named by ``source`` (``torchvision:<name>`` or ``<module or file.py>:<callable>``)."""
    if source.startswith("torchvision:"):
        return load_torchvision(source.split(":", 1)[1], weights)
    model = load_callable(source)
    if weights is not None:
        load_state(model, weights)
    return model

"""The table of vector-Jacobian-product rules, one small function per ONNX op type.

A rule receives a :class:`~onnxcam_export.autodiff.context.VJPContext` for one forward node and returns, for every
input of that node, the name of the tensor holding ``x̄ = ḡᵀ · ∂y/∂x`` (or ``None`` where no gradient is asked for,
see ``ctx.needs``). Rules only emit ONNX nodes through the context; they never evaluate anything.

To support a new op, write a function in the matching module of ``rules/`` and decorate it with ``@rule("OpType")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import VJPContext

VJPRule = Callable[["VJPContext"], Sequence[str | None]]

RULES: dict[str, VJPRule] = {}


def rule(*op_types: str) -> Callable[[VJPRule], VJPRule]:
    """Register ``fn`` as the VJP rule of each op type in ``op_types`` (default ONNX domain)."""

    def register(fn: VJPRule) -> VJPRule:
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"two gradient rules for {op_type}")
            RULES[op_type] = fn
        return fn

    return register


def supported_ops() -> list[str]:
    """Op types that have a rule, sorted."""
    from . import rules  # noqa: F401  (registers every rule module)

    return sorted(RULES)

"""Reading a model-querying method's parameters from ``MethodRequest.options``: one clear error per bad value."""

from __future__ import annotations

import numpy as np

from .request import MethodRequest


def _is_int(value: object, minimum: int) -> bool:
    try:
        return not isinstance(value, bool) and float(value).is_integer() and int(value) >= minimum  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def int_option(request: MethodRequest, name: str, default: int, minimum: int = 1) -> int:
    """The integer parameter ``name`` (``default`` when absent); ``ValueError`` below ``minimum``."""
    value = request.option(name, default)
    if not _is_int(value, minimum):
        raise ValueError(f"option '{name}' must be an integer >= {minimum}, got {value!r}")
    return int(value)


def float_option(request: MethodRequest, name: str, default: float, low: float, high: float) -> float:
    """The number ``name`` (``default`` when absent); ``ValueError`` outside ``[low, high]``."""
    given = request.option(name, default)
    try:
        value = float(given)
    except (TypeError, ValueError):
        value = float("nan")
    if not low <= value <= high:
        raise ValueError(f"option '{name}' must be a number in [{low}, {high}], got {given!r}")
    return value


def choice_option(request: MethodRequest, name: str, default: str, choices: tuple[str, ...]) -> str:
    """The string ``name`` (``default`` when absent), one of ``choices``."""
    value = str(request.option(name, default))
    if value not in choices:
        raise ValueError(f"option '{name}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def pair_option(request: MethodRequest, name: str, default: int) -> tuple[int, int]:
    """A size ``(rows, columns)`` from one integer or a pair of integers, each >= 1."""
    value = request.option(name, default)
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(_is_int(v, 1) for v in pair):
        raise ValueError(f"option '{name}' must be an integer >= 1 or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def image_array_option(request: MethodRequest, name: str, default: float) -> np.ndarray:
    """A value per input element, ``[N, C, H, W]``: a number, or an array broadcastable to the batch shape."""
    value = np.asarray(request.option(name, default), dtype=np.float32)
    try:
        return np.broadcast_to(value, request.x.shape)
    except ValueError:
        raise ValueError(
            f"option '{name}' must be a number or an array broadcastable to the input {request.x.shape},"
            f" got shape {value.shape}"
        ) from None

"""The parameters of the model-querying methods: declared once per method (name, default, help, allowed values),
read from ``MethodRequest.options`` with one clear error per bad value, and checked before any work.

:func:`check_options` is what the command line and :meth:`onnxcam.explainer.Explainer.explain_arrays` call before the
first image: an unknown key (``mask`` for ``masks``) or a key no chosen method or metric reads is an error listing the
valid keys with the closest match; a bad value is an error naming the option.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .request import MethodRequest

#: Value kinds of :class:`MethodOption`.
KINDS = ("int", "number", "choice", "pair", "array", "tensor", "seed")
_SCALAR_KINDS = ("int", "number", "choice", "pair", "seed")


@dataclass(frozen=True)
class MethodOption:
    """One parameter of a method: ``kind`` (one of :data:`KINDS`), ``default``, ``help`` and its bounds.

    ``int``: an integer >= ``low``; ``number``: a float in ``[low, high]``; ``choice``: one of ``choices``;
    ``pair``: an integer >= 1 or a pair of them; ``array``: a number or an array broadcastable to the input;
    ``tensor``: an array of numbers (shape checked by the method); ``seed``: any integer (a random seed).
    """

    name: str
    kind: str
    default: Any
    help: str
    low: float = 1
    high: float = np.inf
    choices: tuple[str, ...] = ()

    def value(self, given: Any) -> Any:
        """``given`` (``None``: the default) converted and checked; a bad value raises ValueError naming the option."""
        value = self.default if given is None else given
        if value is None:
            return None
        if self.kind == "int":
            if not _is_int(value, int(self.low)):
                raise ValueError(f"option '{self.name}' must be an integer >= {int(self.low)}, got {value!r}")
            return int(value)
        if self.kind == "number":
            number = _float(value)
            if not self.low <= number <= self.high:
                raise ValueError(f"option '{self.name}' must be a number in [{self.low}, {self.high}], got {value!r}")
            return number
        if self.kind == "choice":
            if str(value) not in self.choices:
                raise ValueError(f"option '{self.name}' must be one of {', '.join(self.choices)}, got {value!r}")
            return str(value)
        if self.kind == "pair":
            pair = (value, value) if np.ndim(value) == 0 else tuple(value)
            if len(pair) != 2 or not all(_is_int(v, 1) for v in pair):
                raise ValueError(f"option '{self.name}' must be an integer >= 1 or a pair of them, got {value!r}")
            return int(pair[0]), int(pair[1])
        if self.kind == "seed":
            if not _is_int(value, -(2**63)):
                raise ValueError(f"option '{self.name}' must be an integer (a random seed), got {value!r}")
            return int(value)
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError(f"option '{self.name}' must be a number or an array of numbers, got {value!r}") from None
        if not np.isfinite(array).all():  # a NaN baseline or noise would give a NaN map
            raise ValueError(f"option '{self.name}' must be finite numbers, got {_shown(value)}")
        return array

    def read(self, request: MethodRequest) -> Any:
        """This option's value in ``request`` (an ``array`` comes broadcast to the input ``[N, C, H, W]``)."""
        value = self.value(request.option(self.name, None))
        if self.kind != "array":
            return value
        try:
            return np.broadcast_to(value, request.x.shape)
        except ValueError:
            raise ValueError(
                f"option '{self.name}' must be a number or an array broadcastable to the input {request.x.shape},"
                f" got shape {value.shape}"
            ) from None


#: ``check(values, input_size)``: a method's checks across its parameters and the input's ``(H, W)``.
OptionCheck = Callable[[dict[str, Any], tuple[int, int]], None]

_DECLARED: dict[str, tuple[MethodOption, ...]] = {}
_CHECKS: dict[str, OptionCheck] = {}


def declare_options(method: str, *options: MethodOption, check: OptionCheck | None = None) -> None:
    """Make ``options`` the parameters of the registered method ``method`` (canonical name); ``check`` raises
    ValueError for values that are bad together or for the input size (e.g. an occlusion patch larger than the
    input)."""
    _DECLARED[method] = options
    if check is not None:
        _CHECKS[method] = check


def method_options(method: str) -> tuple[MethodOption, ...]:
    """The declared parameters of ``method`` (canonical name; none for the pure CAM methods)."""
    return _DECLARED.get(method, ())


def options_help() -> str:
    """Every method's parameters as a table, one line per parameter: ``method  name [default]  help``."""
    rows = [(m, f"{o.name} [{o.default}]", o.help) for m, opts in sorted(_DECLARED.items()) for o in opts]
    first = max(len(m) for m, _, _ in rows)
    second = max(len(n) for _, n, _ in rows)
    lines, previous = [], None
    for method, name, text in rows:
        lines.append(f"  {method if method != previous else '':<{first}}  {name:<{second}}  {text}")
        previous = method
    return "\n".join(lines)


def check_options(
    methods: Sequence[str],
    metrics: Sequence[str],
    options: Mapping[str, Any] | None,
    input_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """``options`` checked against what ``methods`` and ``metrics`` read, before any image is touched.

    Method parameters are checked (values kept as given, read again by the methods), together and against the
    network's ``input_size`` ``(H, W)`` when given (defaults included); metric parameters are converted
    (:func:`onnxcam.metrics.base.check_options`). An unknown key raises ValueError listing the valid keys and the
    closest one (``'mask'`` → ``'masks'``); a key of a method or metric not chosen says which one reads it.
    """
    from ..metrics.base import check_options as check_metric_options
    from ..metrics.base import metric_options
    from .base import get_method

    given = dict(options or {})
    names = [get_method(m).name for m in methods]
    valid = {o.name: o for m in names for o in method_options(m)}
    metric_keys = {o.name for o in metric_options()} if metrics else set()
    for key, value in given.items():
        if key in valid:
            valid[key].value(value)
        elif key not in metric_keys:
            raise ValueError(_unknown(key, sorted({*valid, *metric_keys}), names, bool(metrics)))
    for name in names if input_size is not None else ():
        if name in _CHECKS:
            values = {o.name: o.value(given.get(o.name)) for o in method_options(name) if o.kind in _SCALAR_KINDS}
            _CHECKS[name](values, tuple(input_size))  # type: ignore[arg-type]
    return check_metric_options(given) if metrics and given else given


def _unknown(key: str, valid: list[str], methods: list[str], metrics: bool) -> str:
    """The message of an option ``key`` that nothing chosen reads."""
    from ..metrics.base import metric_options

    owners = [m for m, opts in sorted(_DECLARED.items()) if any(o.name == key for o in opts)]
    owners += ["the metrics (--metric)"] if any(o.name == key for o in metric_options()) and not metrics else []
    chosen = ", ".join(methods)
    if owners:
        return f"option '{key}' is read by {', '.join(owners)}, which this run does not use (methods: {chosen})"
    everything = sorted({o.name for opts in _DECLARED.values() for o in opts} | {o.name for o in metric_options()})
    near = difflib.get_close_matches(key, valid or everything, n=1, cutoff=0.5)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    listed = (
        f"valid options for {chosen}{' and the metrics' if metrics else ''}: {', '.join(valid)}"
        if valid
        else (f"{chosen} take{'s' if len(methods) == 1 else ''} no options")
    )
    return f"unknown option '{key}'{hint} ({listed})"


def _is_int(value: object, minimum: int) -> bool:
    try:
        return not isinstance(value, bool) and float(value).is_integer() and int(value) >= minimum  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return False


def _shown(value: object) -> str:
    """``value`` for a message: itself when short, else its array's shape."""
    return repr(value) if np.size(value) <= 4 else f"an array of shape {np.shape(value)} with non-finite values"


def _float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


BATCH_SIZE = MethodOption("batch_size", "int", 64, "perturbed inputs per model run")

"""Pieces shared by the ``explain`` and ``evaluate`` commands: usage errors and ``--option KEY=VALUE`` parsing."""

from __future__ import annotations

import click

from ..batch import BatchUsageError
from ..methods import available_methods
from ..methods.options import options_help

#: The method parameters, a table for the commands' ``--help`` epilog (``\b``: click keeps its lines as they are).
OPTION_HELP = f"\b\nMethod options (--option KEY=VALUE; default in brackets):\n{options_help()}"

#: ``--method``: the methods to run, comma-separated (``explain`` and ``evaluate``).
method_option = click.option(
    "--method",
    default="gradcam",
    show_default=True,
    help=f"Method(s), comma-separated: {', '.join(available_methods())}.",
)
target_option = click.option(
    "--target",
    default="top1",
    show_default=True,
    help="Class to explain: top1, a class index or a label; a comma list explains the sum of those classes (one "
    "map); a binary sigmoid head takes positive or negative (or its two labels). A graph exported with "
    "--unit-layer also takes channel:C, neuron:C,Y,X or unit:K (a unit of that layer).",
)


def usage_error(exc: BatchUsageError) -> click.UsageError:
    """The click error for a :class:`BatchUsageError` (exit status 2, naming the parameter at fault)."""
    return click.BadParameter(str(exc), param_hint=exc.param) if exc.param else click.UsageError(str(exc))


def parse_options(pairs: tuple[str, ...]) -> dict[str, int | float | str]:
    """``("curve_steps=20", "road_noise=0")`` → ``{"curve_steps": 20, "road_noise": 0}`` (numbers read as such)."""
    options: dict[str, int | float | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BatchUsageError(f"expected KEY=VALUE, got {pair!r}", "--option")
        options[key.strip()] = _number(value.strip())
    return options


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text

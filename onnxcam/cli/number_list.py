"""A click option taking one or more numbers: ``--mean 0.5`` or ``--mean 0.485 0.456 0.406``.

Click options take a fixed number of values; this one consumes the numbers that follow it (up to the next token that
is not a number: an option, SOURCE, …) and gives a tuple of floats (``None`` when absent).
"""

from __future__ import annotations

from typing import Any

import click


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class NumberList(click.Option):
    """``--name X [Y …]``: one or more floats as a tuple."""

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for name in self.opts:
            option = parser._long_opt.get(name) or parser._short_opt.get(name)
            if option is not None:
                option.process = self._greedy(option.process)

    @staticmethod
    def _greedy(process: Any) -> Any:
        def consume(value: str, state: Any) -> None:
            values = [value]
            while state.rargs and _is_number(state.rargs[0]):
                values.append(state.rargs.pop(0))
            process(" ".join(values), state)

        return consume

    def type_cast_value(self, ctx: click.Context, value: Any) -> tuple[float, ...] | None:
        if value is None or isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split())
        except ValueError:
            raise click.BadParameter(f"expected numbers, got '{value}'", ctx, self) from None

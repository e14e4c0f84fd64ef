"""Progress bars for long work (tqdm), shown only where a person watches: on a terminal, when switched on.

The command line switches them on (:func:`enable`) when stderr is a terminal and ``-q`` is not given; the library
default is off, so Python callers, pipes, log files and Ray actors stay quiet. :func:`bar` gives the per-image bar of
a batch job; :func:`chunks` the inner bar of a method that runs the model many times (Score-CAM's masked inputs,
RISE's masks, occlusion's patches, SmoothGrad's and Integrated Gradients' points), removed when done. tqdm is
imported only when a bar is shown, so ``import onnxcam`` stays light.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

_state = {"enabled": False}


def enable(on: bool = True) -> None:
    """Show progress bars from now on (``on``) or not."""
    _state["enabled"] = on


def wanted(quiet: bool) -> bool:
    """Whether a command should show bars: stderr is a terminal and ``quiet`` is off."""
    return not quiet and sys.stderr.isatty()


def enabled() -> bool:
    return _state["enabled"]


class _Silent:
    """What :func:`bar` returns when bars are off: accepts the calls, prints nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, file=sys.stderr)

    def close(self) -> None:
        pass


def bar(total: int | None, desc: str, unit: str = "image", leave: bool = True) -> Any:
    """A tqdm bar on stderr of ``total`` steps, or a silent stand-in when bars are off (close it when done)."""
    if not enabled():
        return _Silent()
    from tqdm import tqdm

    try:
        sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):
        sized = False
    width = {"dynamic_ncols": True} if sized else {"ncols": 80, "nrows": 24}  # a terminal that reports no size
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, **width)


def echo(text: str, err: bool = False) -> None:
    """Print a line without breaking an open bar (tqdm's ``write`` when bars are on)."""
    stream = sys.stderr if err else sys.stdout
    if enabled():
        from tqdm import tqdm

        tqdm.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


def chunks(count: int, size: int, desc: str, unit: str = "input") -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of ``count`` items taken ``size`` at a time, advancing an inner bar by each chunk."""
    progress = bar(count, desc, unit=unit, leave=False) if count > size else _Silent()
    try:
        for start in range(0, count, size):
            stop = min(start + size, count)
            yield start, stop
            progress.update(stop - start)
    finally:
        progress.close()

"""Give freed memory back to the operating system between the export's large phases.

Loading, tracing and verifying a model allocate and free many weight-sized buffers. glibc keeps freed heap memory in
its arenas (only chunks above its dynamic mmap threshold, at most 32 MiB, go back at once), so the resident set of an
export grows with every phase although the live data does not: measured on VGG-16 (0.55 GB of float32 weights) from
an ONNX file, 2.77 GB resident after loading where 0.89 GB is live. The next phase's weight-sized arrays are mmap'd
beside that retained heap instead of reusing it. :func:`release` collects Python's cycles and asks glibc to trim
(``malloc_trim(0)``, ``man 3 malloc_trim``); elsewhere (musl, macOS, Windows) it only collects.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc

import onnx

from .large_protos import tensor_bytes

#: Weight bytes above which :func:`release_for` releases (a release costs ~0.5 s with torch loaded: small graphs,
#: e.g. localisation's hundred small evaluators, should not pay it).
RELEASE_ABOVE = 1 << 26


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or ``None`` where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release() -> None:
    """Free unreachable Python objects (reference cycles holding weights), then return free heap pages to the OS."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def release_for(model: onnx.ModelProto) -> None:
    """:func:`release` before work on ``model`` when its weights exceed :data:`RELEASE_ABOVE` bytes."""
    if sum(map(tensor_bytes, model.graph.initializer)) > RELEASE_ABOVE:
        release()

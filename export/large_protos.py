"""ONNX graphs over protobuf's 2 GiB limit (vit_h_14, regnet_y_128gf: ~2.5 GB of float32 weights).

A ``ModelProto`` that large lives in memory but cannot be serialized, and ``SerializeToString``,
``onnx.shape_inference.infer_shapes``, ``onnx.checker.check_model``, ``onnx.version_converter`` and
``ort.InferenceSession(bytes)`` all serialize it. Every export step that hands a graph to one of them goes through the
helpers here instead. For a *large* graph (:func:`is_large`: more than :data:`LIMIT` bytes of initializer data) each
works on a *skeleton*: a copy whose initializers of at least :data:`SMALLEST_MOVED` bytes are external references
without data (location ``#<name>``, ONNX's tag for a tensor held in memory, ``onnx.model_container``):

- :func:`session`: the skeleton plus the weights as ``OrtValue`` s (``SessionOptions.add_external_initializers``:
  onnxruntime replaces each external reference by the value of that name);
- :func:`infer_shapes`, :func:`convert_version`: run on the skeleton, the weights put back (:func:`restore`);
- :func:`check_model`: the checker on the skeleton (it skips ``#`` locations; dims and types still checked);
- :func:`save`: ``<file>.onnx`` plus ``<file>.onnx.data`` beside it, ONNX's standard external-data format (location,
  offset, length; offsets aligned to :data:`ALIGNMENT`), which ``onnx.load`` and onnxruntime read from the path.

A graph under the limit takes the plain path, byte for byte as before. Only the main graph's initializers are moved
(subgraphs and ``Constant`` nodes are not); tests shrink :data:`LIMIT` to exercise the large path on small models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract

from .errors import ExportError

#: Initializer bytes above which a graph is large: protobuf's 2 GiB (``onnx.checker.MAXIMUM_PROTOBUF``) less 128 MiB
#: for its nodes, attributes and small tensors.
LIMIT = onnx.checker.MAXIMUM_PROTOBUF - (1 << 27)
#: Smallest initializer (bytes) moved out of a large graph (ONNX's ``size_threshold`` default): shape constants stay
#: inside, where shape inference's data propagation reads them.
SMALLEST_MOVED = 1024
#: Offset alignment of the tensors in the data file (a page: onnxruntime can map them).
ALIGNMENT = 4096
#: Location prefix of a tensor held in memory (ONNX's convention; the checker does not look for such a file).
IN_MEMORY = "#"


def tensor_bytes(tensor: TensorProto) -> int:
    """Bytes of ``tensor``'s values held in the proto (0 for external data), from its dims and type (no copy)."""
    if tensor.data_location == TensorProto.EXTERNAL:
        return 0
    if tensor.data_type == TensorProto.STRING:
        return tensor.ByteSize()
    return math.prod(tensor.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def is_large(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s initializers hold more than :data:`LIMIT` bytes (then it cannot be one protobuf)."""
    return sum(map(tensor_bytes, model.graph.initializer)) > LIMIT


def _moved(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """The initializers a large ``model`` keeps out of its skeleton, by name (``{}`` for a graph under the limit)."""
    if not is_large(model):
        return {}
    return {t.name: t for t in model.graph.initializer if tensor_bytes(t) >= SMALLEST_MOVED}


def _refer(tensor: TensorProto, **entries: object) -> None:
    """Make ``tensor`` an external reference (``location``, ``offset``, ``length``) without data in the proto."""
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=str(value))


def skeleton(model: onnx.ModelProto, moved: dict[str, TensorProto]) -> onnx.ModelProto:
    """A copy of ``model`` whose ``moved`` initializers are references ``#<name>`` with their name, dims and type but
    no data (the other fields copied; the weights never are)."""
    copy = without_initializers(model)
    for tensor in model.graph.initializer:
        if tensor.name not in moved:
            copy.graph.initializer.append(tensor)
            continue
        header = copy.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        _refer(header, location=IN_MEMORY + tensor.name)
    return copy


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its main graph's initializers (every other field copied; the weights never are)."""
    copy = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(copy, field.name, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(copy.graph, field.name, value)
    return copy


def _copy_field(target: object, name: str, value: object) -> None:
    if hasattr(value, "extend"):  # a repeated field
        getattr(target, name).extend(value)
    elif hasattr(value, "CopyFrom"):
        getattr(target, name).CopyFrom(value)
    else:
        setattr(target, name, value)


def restore(model: onnx.ModelProto, moved: dict[str, TensorProto]) -> onnx.ModelProto:
    """``model`` (a processed skeleton) with the data of its ``moved`` initializers put back (in place; returned)."""
    for tensor in model.graph.initializer:
        if tensor.name in moved:
            tensor.CopyFrom(moved[tensor.name])
    return model


def session(
    model: onnx.ModelProto, outputs: Sequence[onnx.ValueInfoProto] | None = None, log_level: int = 3
) -> ort.InferenceSession:
    """An onnxruntime CPU session of ``model``, over 2 GiB too (its large weights passed as ``OrtValue`` s).

    ``outputs``: the graph outputs to compute instead of ``model``'s (a probe of intermediate tensors, ``model`` left
    unchanged, its weights not copied). ``log_level``: onnxruntime's ``log_severity_level`` (3: errors only).
    """
    moved = _moved(model)
    proto = model if not moved and outputs is None else skeleton(model, moved)
    if outputs is not None:
        del proto.graph.output[:]
        proto.graph.output.extend(outputs)
    options = ort.SessionOptions()
    options.log_severity_level = log_level
    if moved:  # onnxruntime copies them while it loads the graph: the arrays may go once the session exists
        values = [ort.OrtValue.ortvalue_from_numpy(numpy_helper.to_array(t)) for t in moved.values()]
        options.add_external_initializers(list(moved), values)
        options.add_session_config_entry("session.disable_prepacking", "1")  # packed GEMM weights: a second copy
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def infer_shapes(model: onnx.ModelProto, weights: bool = True, **kwargs: bool) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model, **kwargs)`` of a graph of any size (same result). ``weights=False``:
    a large graph's moved initializers stay data-less references (for callers that read types only: no copy)."""
    moved = _moved(model)
    if not moved:
        return onnx.shape_inference.infer_shapes(model, **kwargs)
    inferred = onnx.shape_inference.infer_shapes(skeleton(model, moved), **kwargs)
    return restore(inferred, moved) if weights else inferred


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` of a graph of any size (a large one's moved weights: dims and type only)."""
    moved = _moved(model)
    onnx.checker.check_model(skeleton(model, moved) if moved else model, full_check=full_check)


def convert_version(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``onnx.version_converter.convert_version`` of a graph of any size."""
    from onnx import version_converter

    moved = _moved(model)
    if not moved:
        return version_converter.convert_version(model, opset)
    return restore(version_converter.convert_version(skeleton(model, moved), opset), moved)


def data_path(path: str | Path) -> Path:
    """The external-data file written beside the large graph ``path``: ``<file>.onnx.data``."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def save(model: onnx.ModelProto, path: str | Path) -> None:
    """Write ``model`` to ``path`` atomically: one file, or for a large graph the file and its :func:`data_path`
    (ONNX external data), each written to a temporary file beside it and renamed (the data first) once both are
    complete; nothing is left behind on failure. ``model`` is not changed. One file written over a large pair removes
    the pair's data file (the weights of a graph that no longer exists; a data file the old graph did not read stays).
    Raises :class:`.ExportError` in one line when the operating system refuses the path (a folder, a read-only disk,
    a file where a folder should be)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    data = data_path(path)
    tmp_data = data.with_name(f".{data.name}.tmp")
    moved = _moved(model)
    check_writable(path)  # a folder: renaming onto it would fail after the data file replaced the old pair's
    try:
        stale = not moved and data.is_file() and _reads(path, data.name)
        try:
            if moved:
                proto = skeleton(model, moved)
                _write_data(proto, moved, tmp_data, data.name)
                _write_proto(proto, tmp)
                tmp_data.replace(data)
            else:
                _write_proto(model, tmp)
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
            tmp_data.unlink(missing_ok=True)
        if stale:
            data.unlink()
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def check_writable(path: str | Path) -> None:
    """Raise :class:`.ExportError` in one line when :func:`save` could not write ``path`` (a folder, a parent that
    cannot be created, a folder that takes no new file), so an export fails before its work, not after; creates the
    missing parent folders."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder; give a file path, e.g. {path / 'model.onnx'}")
    probe = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise _cannot_write(path, exc) from None


def _cannot_write(path: Path, exc: OSError) -> ExportError:
    return ExportError(f"cannot write {path}: {exc.strerror or exc}; choose another output path")


def _reads(path: Path, location: str) -> bool:
    """Whether the file at ``path`` is an explainer graph (written by :func:`save`: contract metadata) that keeps
    initializers in the external-data file ``location`` (its weights are not loaded). ``False`` for any other file:
    a source model exported over in place keeps its weights file."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # whatever is there, it reads no data file we wrote
        return False
    tensors = model.graph.initializer
    ours = any(p.key == contract.META_VERSION for p in model.metadata_props)
    return ours and any(e.key == "location" and e.value == location for t in tensors for e in t.external_data)


def _write_proto(model: onnx.ModelProto, path: Path) -> None:
    try:
        onnx.save_model(model, str(path))
    except ValueError as exc:  # still over 2 GiB without the initializers: huge Constant nodes or subgraphs
        if "2 GB" not in str(exc):  # onnx.serialization's message for a proto over the limit
            raise
        raise ExportError(
            f"cannot write {path.name.removeprefix('.').removesuffix('.tmp')}: the graph is over protobuf's 2 GiB "
            f"limit outside its initializers ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "store large constants as initializers"
        ) from None


def _write_data(proto: onnx.ModelProto, moved: dict[str, TensorProto], path: Path, location: str) -> None:
    """Write the ``moved`` tensors' bytes to ``path`` and point ``proto``'s references at them (``location``)."""
    with path.open("wb") as file:
        for header in proto.graph.initializer:
            tensor = moved.get(header.name)
            if tensor is None:
                continue
            offset = (file.tell() + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
            file.seek(offset)
            raw = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
            file.write(raw)
            _refer(header, location=location, offset=offset, length=len(raw))


def written_beside(model: onnx.ModelProto, path: str | Path) -> str:
    """What :func:`save` wrote beside ``path`` for ``model``, for the log: ``''`` for one file."""
    if not is_large(model):
        return ""
    return f" and its weights {data_path(path).name} (over protobuf's 2 GiB: ONNX external data; keep them together)"


def drop_initializers(graph: onnx.GraphProto, drop: Callable[[str], bool]) -> None:
    """Delete the initializers whose name ``drop`` accepts, in place: the kept ones are not copied (re-adding them to
    the field, the usual filter, copies every weight while the old ones stay in the message's memory)."""
    for i in reversed(range(len(graph.initializer))):
        if drop(graph.initializer[i].name):
            del graph.initializer[i]

"""The external-data file names an ONNX model refers to, read with a minimal protobuf walk (no ``onnx`` package).

Only the messages that can hold a ``TensorProto`` are descended into (field numbers from ``onnx.proto``); every
other field, weights included, is skipped by its length, so the scan costs one pass over the model's structure.
"""

from __future__ import annotations

# Message kinds, and for each the fields (number → kind) that lead to a TensorProto.
_MODEL, _TRAINING, _FUNCTION, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TENSOR, _ENTRY = range(9)
_CHILDREN: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},  # attribute
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},  # t, g, tensors, graphs…
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
    _TENSOR: {13: _ENTRY},  # external_data (StringStringEntryProto key = 1, value = 2)
}
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
MODEL_GRAPH_FIELD = 7


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """Decode the base-128 varint at ``pos``: ``(value, position after it)``."""
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("truncated or overlong varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def fields(data: memoryview) -> list[tuple[int, memoryview | None]]:
    """``(field number, payload)`` of each field of one message; the payload of a non-length-delimited field is
    ``None``. Raises :class:`ProtobufError` on a wire type ONNX never uses or a field running past the end."""
    out: list[tuple[int, memoryview | None]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == _VARINT:
            _, pos = _varint(data, pos)
            out.append((number, None))
            continue
        if wire == _LENGTH:
            size, pos = _varint(data, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise ProtobufError(f"wire type {wire}")
        if pos + size > len(data):
            raise ProtobufError("field runs past the end of its message")
        out.append((number, data[pos : pos + size] if wire == _LENGTH else None))
        pos += size
    return out


def external_locations(model: bytes) -> list[str]:
    """The ``location`` of every tensor stored as external data in the serialized ``ModelProto`` ``model``: in the
    graph's initializers, in ``Constant``-like node attributes, in subgraphs (``If``/``Loop``/``Scan`` bodies),
    functions and training graphs. Raises :class:`ProtobufError` when ``model`` is not a ModelProto with a graph."""
    locations: list[str] = []
    stack: list[tuple[int, memoryview]] = [(_MODEL, memoryview(model))]
    while stack:
        kind, data = stack.pop()
        parsed = fields(data)
        if kind == _MODEL and not any(n == MODEL_GRAPH_FIELD and p is not None for n, p in parsed):
            raise ProtobufError("no graph")
        if kind == _ENTRY:
            entry = {n: bytes(p).decode("utf-8", "replace") for n, p in parsed if p is not None}
            if entry.get(1) == "location":
                locations.append(entry.get(2, ""))
            continue
        children = _CHILDREN[kind]
        stack += [(children[n], p) for n, p in parsed if n in children and p is not None]
    return locations

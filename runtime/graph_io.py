"""The input and output names and element types of an ONNX graph, read from its protobuf bytes without onnx.

load_manifest checks every pipeline graph against the manifest before ONNX Runtime opens any session,
and the runtime does not depend on the `onnx` package. ModelProto is protobuf; only the fields on the
way to the graph's inputs and outputs are decoded (ModelProto.graph = 7, GraphProto.input = 11 and
output = 12, ValueInfoProto.name = 1 and type = 2, TypeProto.tensor_type = 1, Tensor.elem_type = 1),
every other field (the weights included) is skipped by its length, so a large graph costs no copy.
"""
from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

# TensorProto.DataType values the bundle uses, by the manifest's dtype names.
ELEM_TYPES = {1: "float32", 6: "int32", 7: "int64", 8: "string", 10: "float16", 11: "float64"}

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class GraphIOError(ValueError):
    """The bytes are not a readable ONNX ModelProto."""


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise GraphIOError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphIOError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message; LEN values as memoryview slices."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise GraphIOError("truncated field")
            yield number, wire, buf[pos:pos + size]
            pos += size
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise GraphIOError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise GraphIOError("truncated message")


def _sub(buf: memoryview, number: int) -> list[memoryview]:
    return [v for n, w, v in _fields(buf) if n == number and w == _LEN and isinstance(v, memoryview)]


def _value_info(buf: memoryview) -> tuple[str, str]:
    name, elem = "", "unknown"
    for n, w, v in _fields(buf):
        if n == 1 and w == _LEN and isinstance(v, memoryview):
            name = bytes(v).decode("utf-8", errors="replace")
        elif n == 2 and w == _LEN and isinstance(v, memoryview):
            for tensor in _sub(v, 1):  # TypeProto.tensor_type
                for tn, tw, tv in _fields(tensor):
                    if tn == 1 and tw == _VARINT and isinstance(tv, int):
                        elem = ELEM_TYPES.get(tv, f"type {tv}")
    return name, elem


def graph_io_from_bytes(data: bytes | memoryview) -> tuple[dict[str, str], dict[str, str]]:
    """({input name: dtype}, {output name: dtype}) of a serialised ModelProto, in graph order.

    Initializers listed among the inputs (old exporters did that) are left out, as ONNX Runtime does.
    """
    buf = memoryview(data)
    graphs = _sub(buf, 7)
    if len(graphs) != 1:
        raise GraphIOError("no graph in the model" if not graphs else "more than one graph")
    graph = graphs[0]
    initializers: set[str] = set()
    inputs: dict[str, str] = {}
    outputs: dict[str, str] = {}
    for n, w, v in _fields(graph):
        if w != _LEN or not isinstance(v, memoryview):
            continue
        if n == 5:  # TensorProto initializer: its name is field 8
            for tn, tw, tv in _fields(v):
                if tn == 8 and tw == _LEN and isinstance(tv, memoryview):
                    initializers.add(bytes(tv).decode("utf-8", errors="replace"))
        elif n == 11:
            name, elem = _value_info(v)
            inputs[name] = elem
        elif n == 12:
            name, elem = _value_info(v)
            outputs[name] = elem
    return {k: t for k, t in inputs.items() if k not in initializers}, outputs


def graph_io(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, str]]:
    """graph_io_from_bytes of a file, through mmap (the weights are skipped, never copied)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise GraphIOError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return graph_io_from_bytes(view)
            finally:
                view.release()

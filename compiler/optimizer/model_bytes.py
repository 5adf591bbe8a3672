"""Large models without whole-model copies: where each initializer's bytes lie in the
file, the model as pieces to write, and weightless copies for onnxruntime.

A 500 MB model is almost all initializer data. protobuf (upb) copies every
`raw_data` it hands to Python, serializes a whole model at ~0.3 GB/s into a
buffer it grows by copying, and `ByteSize()` is a full serialization. So:

- `scan_initializers` walks the protobuf wire format of the file once and
  finds each top-level initializer's record and its raw_data as offsets into
  the file's bytes: sizes are checked, arrays viewed (`np.frombuffer`) and
  unchanged records written back without a single copy.
- `model_pieces` serializes the optimized model as the concatenation of a
  small message (everything but the initializers) and one piece per
  initializer; an initializer no pass changed is its original record, a
  slice of the file. Protobuf allows a message's fields in any order, so the
  pieces concatenated are a valid ModelProto.
- `weightless` copies give onnxruntime the graph with every plain initializer
  marked external, and `external_arrays` the arrays it then takes by
  reference (SessionOptions.add_external_initializers): no serialization,
  and no copy of the weights inside onnxruntime either.

Anything unusual (a repeated graph field, typed-data tensors, external data)
simply falls outside the fast path: such tensors are serialized as usual.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from netc.compiler.optimizer.shapes import quiet_onnx_ir

# The fields this module reads: ModelProto.graph = 7, GraphProto.initializer = 5,
# TensorProto.dims = 1, data_type = 2, name = 8, raw_data = 9.
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_DIMS, _DATA_TYPE, _NAME, _RAW = 1, 2, 8, 9
# Fixed-size types numpy holds as they are stored (little-endian raw_data).
_PLAIN: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.UINT16: np.uint16,
    onnx.TensorProto.UINT32: np.uint32,
    onnx.TensorProto.UINT64: np.uint64,
    onnx.TensorProto.BOOL: np.bool_,
}
IN_MEMORY = "netc-in-memory"  # the location a weightless copy's initializers point to
# Smaller tensors stay inside weightless copies: onnxruntime reads shapes and other
# small constants while it loads a model, and they cost nothing to copy.
MIN_EXTERNAL_BYTES = 1024


@dataclass(frozen=True)
class StoredTensor:
    """One initializer's record in the file: [start, end) of the whole TensorProto (its
    field in the graph begins at `key`), [raw_start, raw_end) of its raw_data (whose
    field begins at `raw_key`); `plain` when name, dims, data_type and raw_data are all
    it has and the type is one numpy holds as stored."""

    name: str
    dims: tuple[int, ...]
    data_type: int
    key: int
    start: int
    end: int
    raw_key: int
    raw_start: int
    raw_end: int
    plain: bool

    @property
    def raw_size(self) -> int:
        return self.raw_end - self.raw_start

    @property
    def large(self) -> bool:
        """Worth keeping out of protobuf: plain and at least MIN_EXTERNAL_BYTES."""
        return self.plain and self.raw_size >= MIN_EXTERNAL_BYTES

    def array(self, data: bytes) -> np.ndarray:
        """A read-only view of the raw_data in `data` (no copy)."""
        dtype = np.dtype(_PLAIN[self.data_type])
        count = self.raw_size // dtype.itemsize
        return np.frombuffer(data, dtype, count, self.raw_start).reshape(self.dims)


class _Malformed(Exception):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes, pos: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end, where the field
    begins) for each field in data[pos:end]."""
    while pos < end:
        begins = pos
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            yield number, wire, value, pos, begins
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Malformed
            yield number, wire, pos, pos + length, begins
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _Malformed
            yield number, wire, pos, pos, begins
        else:  # groups (3, 4) never occur in ONNX
            raise _Malformed
    if pos != end:
        raise _Malformed


def scan_initializers(data: bytes) -> list[StoredTensor] | None:
    """The top-level graph's initializers as they lie in `data`, in file order; None when
    the layout is not the plain one (no graph, or a graph split over several fields)."""
    view = memoryview(data)
    try:
        graph = _graph_field(data)
        if graph is None:
            return None
        _, start, end = graph
        return [
            _tensor(data, view, s, e, k)
            for n, w, s, e, k in _fields(data, start, end)
            if (n, w) == (_GRAPH_INITIALIZER, 2)
        ]
    except (_Malformed, UnicodeDecodeError):
        return None


def _graph_field(data: bytes) -> tuple[int, int, int] | None:
    """(field begins, payload start, payload end) of the one graph field, or None."""
    graphs = [(k, s, e) for n, w, s, e, k in _fields(data, 0, len(data)) if (n, w) == (7, 2)]
    return graphs[0] if len(graphs) == 1 else None


def light_model_bytes(data: bytes, stored: Sequence[StoredTensor]) -> bytes:
    """`data` (a ModelProto that `scan_initializers` read) without the raw_data of its
    large initializers: a model of a few kilobytes that parses in no time; `load_ir`
    puts the data back as views of `data`."""
    graph = _graph_field(data)
    assert graph is not None  # scan_initializers found it
    key, start, end = graph
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    pos = start
    for tensor in stored:
        if not tensor.large:
            continue
        header = bytes(view[tensor.start : tensor.raw_key]) + bytes(
            view[tensor.raw_end : tensor.end]
        )
        parts += [view[pos : tensor.key], _key(_GRAPH_INITIALIZER, 2), _encode_varint(len(header))]
        parts.append(header)
        pos = tensor.end
    parts.append(view[pos:end])
    body = b"".join(parts)
    return b"".join(
        [view[:key], _key(_MODEL_GRAPH, 2), _encode_varint(len(body)), body, view[end:]]
    )


def load_ir(
    proto: onnx.ModelProto, data: bytes, stored: Sequence[StoredTensor]
) -> tuple[ir.Model, Originals]:
    """The IR model of `proto` (whole, or light as `light_model_bytes` makes it) with
    every large initializer a read-only view of its bytes in `data`: no copy."""
    model = ir.from_proto(proto)
    for record in stored:
        value = model.graph.initializers.get(record.name)
        if record.large and value is not None:
            value.const_value = ir.Tensor(record.array(data), name=record.name)
    return model, Originals(model, data, stored)


def _tensor(data: bytes, view: memoryview, start: int, end: int, key: int) -> StoredTensor:
    name, dims, data_type, raw, raw_key, plain = "", [], 0, (start, start), start, True
    for number, wire, a, b, begins in _fields(data, start, end):
        if number == _DIMS and wire == 0:
            dims.append(a)
        elif number == _DIMS and wire == 2:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(data, pos, b)
                dims.append(value)
        elif number == _DATA_TYPE and wire == 0:
            data_type = a
        elif number == _NAME and wire == 2:
            name = bytes(view[a:b]).decode()
        elif number == _RAW and wire == 2:
            raw, raw_key = (a, b), begins
        else:
            plain = False
    # dims are int64 read as unsigned here: a negative one is left to protobuf and the checks
    plain = plain and data_type in _PLAIN and raw[1] > raw[0] and all(d < 2**63 for d in dims)
    return StoredTensor(name, tuple(dims), data_type, key, start, end, raw_key, *raw, plain)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Originals:
    """The initializers of a freshly converted ir.Model tied to their records in the file,
    so that an unchanged one is written, and shown to onnxruntime, straight from it."""

    def __init__(self, model: ir.Model, data: bytes, stored: Sequence[StoredTensor]) -> None:
        self.data = data
        by_name = {t.name: t for t in stored}
        # id → (tensor, record); the tensor is held so that its id is never reused
        self._records: dict[int, tuple[ir.TensorProtocol, StoredTensor]] = {}
        for value in model.graph.initializers.values():
            tensor, record = value.const_value, by_name.get(value.name or "")
            if tensor is not None and record is not None:
                self._records[id(tensor)] = (tensor, record)

    def record(self, value: ir.Value) -> StoredTensor | None:
        """The file's record of `value`'s tensor when the tensor is the one read from the
        file and still stored under the same name, dims and type."""
        tensor = value.const_value
        if tensor is None:
            return None
        found = self._records.get(id(tensor))
        if found is None or found[0] is not tensor:
            return None
        record = found[1]
        if value.name != record.name or tensor.metadata_props:
            return None
        if isinstance(tensor, ir.serde.TensorProtoTensor):  # a proto can be edited in place
            proto = tensor.raw
            same = (proto.name, tuple(proto.dims), proto.data_type)
            return record if same == (record.name, record.dims, record.data_type) else None
        return record  # a view of the file's bytes, which nothing can write


def model_pieces(model: ir.Model, originals: Originals | None) -> list[bytes | memoryview]:
    """`model` serialized as pieces whose concatenation is its ModelProto."""
    head = light_proto(model)
    graph = head.graph.SerializeToString()
    head.ClearField("graph")
    framed: list[bytes | memoryview] = []
    for value in model.graph.initializers.values():
        stored = originals.record(value) if originals is not None else None
        record: bytes | memoryview
        if stored is not None:
            assert originals is not None
            record = memoryview(originals.data)[stored.start : stored.end]
        elif value.const_value is not None:
            value.const_value.name = value.name  # as onnx_ir's serializer does
            record = ir.serde.serialize_tensor(value.const_value).SerializeToString()
        else:
            continue
        framed += [_key(_GRAPH_INITIALIZER, 2) + _encode_varint(len(record)), record]
    size = len(graph) + sum(len(piece) for piece in framed)
    return [head.SerializeToString(), _key(_MODEL_GRAPH, 2) + _encode_varint(size), graph, *framed]


def light_proto(model: ir.Model) -> onnx.ModelProto:
    """The ModelProto of `model` without initializer data: graph.initializer is empty."""
    values = list(model.graph.initializers.values())
    saved = [value.const_value for value in values]
    try:
        for value in values:
            value.const_value = None
        with quiet_onnx_ir():  # "initializer without a constant value": meant
            return ir.to_proto(model)
    finally:
        for value, tensor in zip(values, saved):
            value.const_value = tensor


def weightless_ir(
    model: ir.Model, originals: Originals | None
) -> tuple[bytes, dict[str, np.ndarray]]:
    """(the serialized model with every plain initializer marked external, those arrays)."""
    proto = light_proto(model)
    arrays: dict[str, np.ndarray] = {}
    for value in model.graph.initializers.values():
        tensor, name = value.const_value, value.name or ""
        if tensor is None:
            continue
        record = originals.record(value) if originals is not None else None
        if record is not None and record.large:
            assert originals is not None
            arrays[name] = record.array(originals.data)
        elif (
            tensor.dtype.value in _PLAIN
            and not isinstance(tensor, ir.serde.TensorProtoTensor)
            and tensor.nbytes >= MIN_EXTERNAL_BYTES
        ):
            arrays[name] = np.ascontiguousarray(tensor.numpy())
        else:  # anything else travels inside the model, as usual
            tensor.name = name
            proto.graph.initializer.append(ir.serde.serialize_tensor(tensor))
            continue
        proto.graph.initializer.append(_external_stub(name, tensor.shape.numpy(), tensor.dtype))
    return proto.SerializeToString(), arrays


def weightless_proto(
    proto: onnx.ModelProto, data: bytes, stored: Sequence[StoredTensor]
) -> tuple[bytes, dict[str, np.ndarray]]:
    """As `weightless_ir`, for a ModelProto read from `data` (whose initializers `stored`
    locates): the model's other fields are copied, its plain initializers are not."""
    light = onnx.ModelProto()
    for descriptor, value in proto.ListFields():
        if descriptor.name != "graph":
            _copy_field(light, descriptor, value)
    for descriptor, value in proto.graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(light.graph, descriptor, value)
    by_name = {t.name: t for t in stored if t.large}
    arrays = {}
    for tensor in proto.graph.initializer:
        record = by_name.get(tensor.name)
        if record is None:
            light.graph.initializer.append(tensor)
            continue
        arrays[record.name] = record.array(data)
        light.graph.initializer.append(
            _external_stub(record.name, record.dims, ir.DataType(record.data_type))
        )
    return light.SerializeToString(), arrays


def _copy_field(target, descriptor, value) -> None:
    if descriptor.is_repeated:
        getattr(target, descriptor.name).extend(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        getattr(target, descriptor.name).CopyFrom(value)
    else:
        setattr(target, descriptor.name, value)


def _external_stub(name: str, dims, dtype: ir.DataType) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=name, data_type=dtype.value, dims=list(dims))
    stub.data_location = onnx.TensorProto.EXTERNAL
    entry = stub.external_data.add()
    entry.key, entry.value = "location", IN_MEMORY
    return stub

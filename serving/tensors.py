"""Tensors on Triton's wire (ModelInferRequest / ModelInferResponse) ⇄ numpy.

Inputs arrive either as `raw_input_contents` (one bytes entry per input, in
order: row-major little-endian values, or for BYTES a 4-byte little-endian
length before each element) or as typed `contents` (fp32_contents, ...).
Outputs always go back in `raw_output_contents`, the only place the stock
client reads numeric outputs from. Every error names the tensor and says what
was expected.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from netc.limits import MAX_DIM
from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.batching_tensors import CheckedRequest, Tensors
from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.model_info import DATATYPES

MAX_RANK = 32  # numpy holds 64; no vision model takes more than a handful
MAX_CLASSIFICATION = 4096  # top-k entries one output item may return as text

# Which InferTensorContents field carries each datatype (FP16 and BF16 only travel raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
# Looked up once: this module runs for every request, and building a dtype costs
# more than the rest of a small request's decoding.
WIRE_DTYPES = {name: np.dtype(kind).newbyteorder("<") for name, kind in DATATYPES.items()}
DATATYPE_NAMES = {np.dtype(kind): name for name, kind in DATATYPES.items() if name != "BYTES"}


def _dtype(datatype: str) -> np.dtype:
    return WIRE_DTYPES[datatype]


def _described(datatype: str, shape: Sequence[int]) -> str:
    return f"{datatype} {list(shape)}"


def _check_shape(name: str, shape: Sequence[int]) -> None:
    """Sizes numpy can hold: every dim given (>= 0), at most MAX_RANK of them, none huge."""
    if len(shape) > MAX_RANK:
        raise InvalidRequest(
            f"input '{name}': shape has {len(shape)} dimensions; at most {MAX_RANK} are accepted"
        )
    if shape and min(shape) < 0:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} has a negative "
            "dimension; a request must give every size"
        )
    if shape and max(shape) > MAX_DIM:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} has a dimension over {MAX_DIM}; "
            "no model input is that large"
        )


def _check_header(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[str, tuple[int, ...]]:
    name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise InvalidRequest(
            f"input '{name}': unknown or unsupported datatype '{datatype}'; expected one of {known}"
        )
    _check_shape(name, shape)
    parameters = tensor.parameters
    if parameters and any(key in parameters for key in SHARED_MEMORY):
        raise Unsupported(
            f"input '{name}': shared-memory inputs are not supported by "
            "this server; send the data in the request"
        )
    return datatype, shape


def decode_bytes(data: bytes, count: int, what: str) -> list[bytes]:
    """BYTES elements: each a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidRequest(
                f"{what}: raw BYTES content ends inside a length prefix at byte {offset}"
            )
        (length,) = struct.unpack_from("<I", data, offset)
        offset += 4
        if offset + length > len(data):
            raise InvalidRequest(
                f"{what}: raw BYTES element {len(items)} claims {length} "
                f"bytes, but only {len(data) - offset} remain"
            )
        items.append(data[offset : offset + length])
        offset += length
    if len(items) != count:
        raise InvalidRequest(
            f"{what}: raw BYTES content holds {len(items)} elements, expected {count}"
        )
    return items


def texts(items: Sequence[bytes], shape: tuple[int, ...], what: str) -> np.ndarray:
    """BYTES elements as onnxruntime takes them: an object array of str. onnxruntime's
    string tensors hold text: a bytes object would reach the model as its repr ("b'hi'"),
    and a str cannot carry bytes that are not UTF-8 (a lone surrogate fails to encode), so
    those are refused, by element."""
    try:
        decoded = [item.decode() for item in items]
    except UnicodeDecodeError:
        raise _not_utf8(items, shape, what) from None
    array = np.empty(len(decoded), dtype=np.object_)
    array[:] = decoded
    return array.reshape(shape)


def _not_utf8(items: Sequence[bytes], shape: tuple[int, ...], what: str) -> InvalidRequest:
    """The error for the first element that is not UTF-8, with where it is and why."""
    for index, item in enumerate(items):
        try:
            item.decode()
        except UnicodeDecodeError as exc:
            where = [int(i) for i in np.unravel_index(index, shape)]
            return InvalidRequest(
                f"{what}: BYTES element {where} is not valid UTF-8 (byte {exc.start} of "
                f"{len(item)}, 0x{item[exc.start : exc.end].hex()}: {exc.reason}); the "
                "model's string tensors hold text only"
            )
    return InvalidRequest(f"{what}: BYTES content is not valid UTF-8")


def encode_bytes(array: np.ndarray) -> bytes:
    """The inverse of `decode_bytes`; str elements (onnxruntime's strings) are sent as
    UTF-8."""
    parts = []
    for item in array.reshape(-1):
        data = item if isinstance(item, bytes) else str(item).encode()
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def _from_raw(name: str, datatype: str, shape: tuple[int, ...], data: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        what = f"input '{name}'"
        return texts(decode_bytes(data, count, what), shape, what)
    expected = count * _dtype(datatype).itemsize
    if len(data) != expected:
        raise InvalidRequest(
            f"input '{name}': raw content has {len(data)} bytes, expected "
            f"{expected} for {_described(datatype, shape)}"
        )
    return np.frombuffer(data, dtype=_dtype(datatype)).reshape(shape)


def _from_contents(
    name: str, datatype: str, shape: tuple[int, ...], contents: pb.InferTensorContents
) -> np.ndarray:
    count = math.prod(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(
            f"input '{name}': {datatype} data must be sent in "
            "raw_input_contents (there is no typed field for it)"
        )
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidRequest(
            f"input '{name}': {len(values)} {field} values, expected "
            f"{count} for {_described(datatype, shape)}"
        )
    if datatype == "BYTES":
        return texts(values, shape, f"input '{name}'")
    wide = np.array(values)
    target = np.dtype(DATATYPES[datatype])
    if target.kind in "iu" and wide.size:
        info = np.iinfo(target)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidRequest(
                f"input '{name}': {field} has values outside the "
                f"{datatype} range {info.min}..{info.max}"
            )
    return wide.astype(target).reshape(shape)


def decode_inputs(request: pb.ModelInferRequest) -> Tensors:
    """The request's inputs as numpy arrays, by name (not yet checked against a model)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        names = ", ".join(f"'{t.name}'" for t in request.inputs) or "none"
        raise InvalidRequest(
            f"the request has {len(raw)} raw_input_contents for "
            f"{len(request.inputs)} inputs ({names}); send one per input, "
            "in the order of 'inputs'"
        )
    tensors: Tensors = {}
    for index, tensor in enumerate(request.inputs):
        name = tensor.name
        if name in tensors:
            raise InvalidRequest(f"input '{name}' appears more than once in the request")
        datatype, shape = _check_header(tensor)
        has_contents = tensor.HasField("contents") and tensor.contents.ByteSize() > 0
        if raw:
            if has_contents:
                raise InvalidRequest(
                    f"input '{name}': typed contents given together with "
                    "raw_input_contents; use one or the other"
                )
            tensors[name] = _from_raw(name, datatype, shape, raw[index])
        elif has_contents or math.prod(shape) == 0:
            tensors[name] = _from_contents(name, datatype, shape, tensor.contents)
        else:
            raise InvalidRequest(
                f"input '{name}': no data; expected "
                f"{_described(datatype, shape)} in raw_input_contents "
                "or in contents"
            )
    return tensors


def common_request(
    request: pb.ModelInferRequest, expected: dict, max_batch: int
) -> CheckedRequest | None:
    """The common request, decoded and checked in one pass: one fixed-size input, sent
    raw, without parameters, exactly as the model wants it. Returns what
    `ServedModel.check` would, or None for anything else, which takes the general path
    and its error messages. (On the busy server the
    general path's dozen calls cost ~15 µs a request, a tenth of the event loop's time.)
    `expected`: `ServedModel.expected`, input name → (spec, dtype)."""
    raw = request.raw_input_contents
    if len(raw) != 1 or len(expected) != 1 or len(request.inputs) != 1:
        return None
    tensor = request.inputs[0]
    name = tensor.name
    spec, dtype = expected.get(name, (None, None))
    if (
        spec is None
        or tensor.datatype != spec.datatype
        or spec.datatype == "BYTES"
        or tensor.parameters
        or tensor.HasField("contents")
    ):
        return None
    shape = tuple(tensor.shape)
    if min(spec.dims, default=0) < 0 or len(shape) != len(spec.dims) + (1 if max_batch else 0):
        return None  # open sizes (a request may even repeat the -1) and wrong ranks
    item = shape[1:] if max_batch else shape
    if item != spec.dims or (max_batch and not 1 <= shape[0] <= max_batch):
        return None
    data = raw[0]
    if len(data) != math.prod(shape) * dtype.itemsize:
        return None
    array = np.frombuffer(data, dtype=WIRE_DTYPES[spec.datatype]).reshape(shape)
    return CheckedRequest({name: array}, shape[0] if max_batch else 1, ((name, item),))


def datatype_of(array: np.ndarray) -> str:
    """Triton's name for an array's element type."""
    dtype = array.dtype
    if dtype.kind in "OSU":
        return "BYTES"
    name = DATATYPE_NAMES.get(dtype) or DATATYPE_NAMES.get(dtype.newbyteorder("="))
    if name is not None:
        return name
    raise InvalidRequest(
        f"the model produced {array.dtype} data, which Triton's protocol cannot carry"
    )


def add_output(response: pb.ModelInferResponse, name: str, array: np.ndarray) -> None:
    """Append one output: its description to `outputs`, its data to `raw_output_contents`."""
    datatype = datatype_of(array)
    response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    if datatype == "BYTES":
        data = encode_bytes(array)
    else:
        data = np.ascontiguousarray(array, dtype=_dtype(datatype)).tobytes()
    response.raw_output_contents.append(data)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, ties in index order (a stable sort),
    without sorting everything when k is small."""
    keys = -values.astype(np.float64)
    if k < len(keys) // 2:
        threshold = np.partition(keys, k - 1)[k - 1]
        if np.isnan(threshold):  # fewer numbers than k: NaNs come last, as a sort puts them
            return np.argsort(keys, kind="stable")[:k]
        candidates = np.flatnonzero(keys <= threshold)  # the k best, and any tied with them
        return candidates[np.argsort(keys[candidates], kind="stable")][:k]
    return np.argsort(keys, kind="stable")[:k]


def classify(array: np.ndarray, k: int, labels: Sequence[str] | None, batched: bool) -> np.ndarray:
    """Triton's classification extension: the top k of each item as "score:index[:label]".

    A batched output [batch, ...] gives [batch, k]; an unbatched one gives [k]. The
    non-batch dims are flattened, so an index is the flat position within an item.
    """
    items = array.reshape(array.shape[0], -1) if batched else array.reshape(1, -1)
    k = min(k, items.shape[1])
    if k > MAX_CLASSIFICATION:  # one string per value: a dense map would take seconds
        raise InvalidRequest(
            f"classification count {k} (of {items.shape[1]} values per item): at most "
            f"{MAX_CLASSIFICATION} top entries are returned as text; ask for fewer, or read "
            "the output itself"
        )
    result = np.empty((items.shape[0], k), dtype=np.object_)
    for row, values in enumerate(items):
        order = _top(values, k)
        for column, index in enumerate(order):
            score = values[index]
            text = f"{score:f}" if values.dtype.kind == "f" else str(score)
            text += f":{index}"
            if labels is not None and index < len(labels):
                text += f":{labels[index]}"
            result[row, column] = text.encode()
    return result if batched else result[0]

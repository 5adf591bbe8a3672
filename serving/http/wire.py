"""KServe v2 REST inference bodies ⇄ Triton's protobuf messages.

A request body is a JSON header, then (Triton's binary tensor data extension) the
binary data of the inputs whose `parameters.binary_data_size` says how many bytes
they take, in input order; the `Inference-Header-Content-Length` header gives the
JSON's length (absent: the whole body is JSON). It becomes a `pb.ModelInferRequest`
for `TritonService._infer`, the request path gRPC takes: JSON data as typed
`contents` (`fp32_contents`, ...), binary data as `raw_input_contents` (then every
input travels raw, JSON ones converted), so the checks that follow are gRPC's.

An answer goes back the same way: an output asked for with `binary_data: true`
(or, by default, with the request's `binary_data_output`) is sent after the JSON
with its `binary_data_size`; the others as JSON `data`, row-major and flat.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.errors import InvalidRequest, clip
from netc.serving.model_info import DATATYPES
from netc.serving.tensors import CONTENTS_FIELD, WIRE_DTYPES, decode_bytes, encode_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


@dataclass
class InferCall:
    """A REST inference request as Triton's message, and how its outputs go back."""

    request: pb.ModelInferRequest
    binary_outputs: dict[str, bool] = field(default_factory=dict)  # name → binary
    binary_default: bool = False  # the request's binary_data_output

    def binary(self, name: str) -> bool:
        return self.binary_outputs.get(name, self.binary_default)


def parse_header(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The body's JSON header (an object) and the binary data after it."""
    data = memoryview(body)
    if header_length is None:
        split = len(body)
    else:
        try:
            split = int(header_length)
        except ValueError:
            split = -1
        if not 0 <= split <= len(body):
            raise InvalidRequest(
                f"{HEADER_LENGTH} is '{clip(header_length)}'; expected the JSON header's length "
                f"in bytes, 0 to {len(body)} (the body's size)"
            )
    try:
        header = json.loads(bytes(data[:split]))
    except (UnicodeDecodeError, ValueError) as exc:
        where = f"the JSON header (the body's first {split} bytes)" if header_length else "the body"
        raise InvalidRequest(f"{where} is not a JSON inference request: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidRequest(
            f"the inference request is a JSON {type(header).__name__}, expected an object "
            '{"inputs": [...]}'
        )
    return header, data[split:]


def infer_call(header: dict, binary: memoryview, model: str, version: str) -> InferCall:
    """The request for `model` (and `version`, '' for the latest) that `header` and
    `binary` (`parse_header`'s) describe."""
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    if "id" in header:
        request.id = _text(header["id"], "id")
    parameters = _object(header.get("parameters", {}), "parameters")
    call = InferCall(request, binary_default=bool(parameters.pop("binary_data_output", False)))
    set_parameters(request.parameters, parameters, "parameters")
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidRequest('the request has no "inputs" list')
    tensors = [_input(i, tensor) for i, tensor in enumerate(inputs)]
    raw = any(size is not None for *_, size in tensors) or any(
        datatype in ("FP16", "BF16") for _, datatype, *_ in tensors
    )
    offset = 0
    for name, datatype, shape, data, size, parameters in tensors:
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        set_parameters(tensor.parameters, parameters, f"input '{name}' parameters")
        if size is not None:
            if offset + size > len(binary):
                raise InvalidRequest(
                    f"input '{name}': binary_data_size {size} at byte {offset} of the binary "
                    f"data, which holds {len(binary)} bytes after the JSON header"
                )
            request.raw_input_contents.append(bytes(binary[offset : offset + size]))
            offset += size
        elif raw:
            request.raw_input_contents.append(_raw_from_json(name, datatype, shape, data))
        else:
            _fill_contents(tensor, data)
    if offset != len(binary):
        raise InvalidRequest(
            f"the body holds {len(binary)} bytes of binary data after the JSON header; its "
            f"inputs' binary_data_size add up to {offset}"
        )
    for i, output in enumerate(_list(header.get("outputs", []), "outputs")):
        output = _object(output, f"outputs[{i}]")
        name = _text(output.get("name"), f"outputs[{i}].name")
        parameters = _object(output.get("parameters", {}), f"output '{name}' parameters")
        if "binary_data" in parameters:
            call.binary_outputs[name] = bool(parameters.pop("binary_data"))
        wanted = request.outputs.add(name=name)
        set_parameters(wanted.parameters, parameters, f"output '{name}' parameters")
    return call


Tensor = tuple[str, str, list[int], Any, "int | None", dict]


def _input(index: int, tensor: Any) -> Tensor:
    """(name, datatype, shape, JSON data, binary size or None, other parameters)."""
    tensor = _object(tensor, f"inputs[{index}]")
    name = _text(tensor.get("name"), f"inputs[{index}].name")
    datatype = _text(tensor.get("datatype"), f"input '{name}' datatype")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and -(2**63) <= d < 2**63 for d in shape
    ):
        raise InvalidRequest(
            f"input '{name}': shape must be a list of integers, found {clip(repr(shape))}"
        )
    parameters = dict(_object(tensor.get("parameters", {}), f"input '{name}' parameters"))
    size = parameters.pop(BINARY_SIZE, None)
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"input '{name}': binary_data_size must be a count of bytes")
        if "data" in tensor:
            raise InvalidRequest(
                f"input '{name}': both JSON data and binary_data_size; send one or the other"
            )
        return name, datatype, shape, None, size, parameters
    if "data" not in tensor:
        raise InvalidRequest(
            f"input '{name}': no data; give \"data\" (JSON) or parameters.binary_data_size "
            "(binary data after the JSON header)"
        )
    return name, datatype, shape, tensor["data"], None, parameters


def _flat(data: Any, name: str) -> list:
    """JSON data, flattened row-major (Triton takes it flat or nested)."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list = []
    for item in data:
        flat.extend(_flat(item, name))
    return flat


def _values(name: str, datatype: str, shape: list[int], data: Any) -> list:
    values = _flat(data, name)
    count = math.prod(shape) if all(d >= 0 for d in shape) else -1
    if count >= 0 and len(values) != count:
        raise InvalidRequest(
            f"input '{name}': \"data\" holds {len(values)} values, expected {count} for "
            f"{datatype} {shape}"
        )
    return values


def _fill_contents(tensor: pb.ModelInferRequest.InferInputTensor, data: Any) -> None:
    """JSON data into the typed field gRPC clients fill (contents.fp32_contents, ...)."""
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:  # an unknown datatype: the request path names it
        return
    values = _values(name, datatype, list(tensor.shape), data)
    if datatype == "BYTES":
        values = [_utf8(v, name) for v in values]
    try:
        getattr(tensor.contents, field).extend(values)
    except (TypeError, ValueError):
        bad = next((v for v in values if not _fits(v, datatype)), values[0] if values else None)
        raise InvalidRequest(
            f"input '{name}': JSON data holds {clip(repr(bad))}, not a {datatype} value"
        ) from None


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "BOOL":
        return isinstance(value, bool)
    if datatype.startswith(("INT", "UINT")):
        if not isinstance(value, int) or isinstance(value, bool):
            return False
        info = np.iinfo(DATATYPES[datatype])
        return int(info.min) <= value <= int(info.max)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _raw_from_json(name: str, datatype: str, shape: list[int], data: Any) -> bytes:
    """JSON data as raw bytes, for a request whose other inputs came binary."""
    if datatype not in DATATYPES:  # the request path names it
        return b""
    if datatype == "BF16":
        raise InvalidRequest(
            f"input '{name}': BF16 data travels as binary data (binary_data_size), not JSON"
        )
    values = _values(name, datatype, shape, data)
    if datatype == "BYTES":
        array = np.array([_utf8(v, name) for v in values], dtype=np.object_)
        return encode_bytes(array)
    if not all(_fits(v, datatype) for v in values):
        bad = next(v for v in values if not _fits(v, datatype))
        raise InvalidRequest(
            f"input '{name}': JSON data holds {clip(repr(bad))}, not a {datatype} value"
        )
    return np.asarray(values, dtype=WIRE_DTYPES[datatype]).tobytes()


def _utf8(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(
            f"input '{name}': BYTES data in JSON are strings, found {clip(repr(value))}"
        )
    return value.encode("utf-8", "surrogateescape")


def set_parameters(target: Any, parameters: dict, what: str) -> None:
    """JSON parameters into a protobuf map of parameters: an inference's InferParameter,
    or a repository call's ModelRepositoryParameter, which carries no floating-point
    numbers."""
    for key, value in parameters.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise InvalidRequest(f"{what}: '{clip(key)}' is out of the int64 range")
            slot.int64_param = value
        elif isinstance(value, float) and "double_param" in slot.DESCRIPTOR.fields_by_name:
            slot.double_param = value
        elif isinstance(value, str):
            slot.string_param = value
        else:
            kinds = "a number" if "double_param" in slot.DESCRIPTOR.fields_by_name else "an integer"
            raise InvalidRequest(
                f"{what}: '{clip(key)}' is a {type(value).__name__}; a parameter is a bool, "
                f"{kinds} or a string"
            )


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object, found {clip(repr(value))}")
    return value


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list):
        raise InvalidRequest(f"{what} must be a JSON list, found {clip(repr(value))}")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, found {clip(repr(value))}")
    return value


# -- answers


def infer_answer(call: InferCall) -> Callable[[pb.ModelInferResponse], tuple[bytes, int | None]]:
    """The `encode` for `TritonService._infer`: the response as a REST body and its JSON
    header's length (None when no output is binary: the body is all JSON)."""

    def encode(response: pb.ModelInferResponse) -> tuple[bytes, int | None]:
        outputs, blobs = [], []
        for tensor, raw in zip(response.outputs, response.raw_output_contents):
            entry: dict[str, Any] = {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.shape),
            }
            if call.binary(tensor.name):
                entry["parameters"] = {BINARY_SIZE: len(raw)}
                blobs.append(raw)
            else:
                entry["data"] = _json_data(tensor.datatype, list(tensor.shape), raw)
            outputs.append(entry)
        answer: dict[str, Any] = {
            "model_name": response.model_name,
            "model_version": response.model_version,
        }
        if response.id:
            answer["id"] = response.id
        answer["outputs"] = outputs
        header = json.dumps(answer, separators=(",", ":")).encode()
        if not blobs:
            return header, None
        return b"".join([header, *blobs]), len(header)

    return encode


def _json_data(datatype: str, shape: list[int], raw: bytes) -> list:
    if datatype == "BYTES":
        items = decode_bytes(raw, math.prod(shape), "output")
        return [item.decode("utf-8", "replace") for item in items]
    values = np.frombuffer(raw, dtype=WIRE_DTYPES[datatype])
    if datatype in ("FP32", "FP16", "FP64"):
        # JSON has no NaN or infinity: they go as null
        return [None if not math.isfinite(v) else v for v in values.tolist()]
    return values.tolist()

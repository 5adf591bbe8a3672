"""Wire compatibility of our Triton protos with the ones compiled into tritonclient.

Protobuf's wire format depends only on field numbers, types and labels (plus names
for JSON and reflection), and gRPC routes by service and method name. So if every
message tritonclient knows exists in our descriptors with the same fields, and the
service has the same methods, the stock client can talk to our server. Our protos
may be newer (more messages or fields); they may never disagree.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

from netc.protos import POOL
from netc.protos.generated import grpc_service_pb2, model_config_pb2

triton = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import model_config_pb2 as triton_config  # noqa: E402
from tritonclient.grpc import service_pb2 as triton_service  # noqa: E402


def _messages(file: FileDescriptor):
    """Every message of a file, nested ones included (map entries too)."""

    def walk(descriptor: Descriptor):
        yield descriptor
        for nested in descriptor.nested_types:
            yield from walk(nested)

    for top in file.message_types_by_name.values():
        yield from walk(top)


def _enums(file: FileDescriptor):
    yield from file.enum_types_by_name.values()
    for message in _messages(file):
        yield from message.enum_types


def _label(field) -> str:  # FieldDescriptor.label is gone in protobuf 7
    return "repeated" if field.is_repeated else "required" if field.is_required else "optional"


def _field_signature(field) -> tuple:
    kind = field.message_type or field.enum_type
    return (
        field.number,
        field.type,
        _label(field),
        field.is_packed,
        kind.full_name if kind is not None else None,
        field.containing_oneof.name if field.containing_oneof else None,
    )


PAIRS = [
    (triton_service.DESCRIPTOR, grpc_service_pb2.DESCRIPTOR),
    (triton_config.DESCRIPTOR, model_config_pb2.DESCRIPTOR),
]


@pytest.mark.parametrize(("theirs", "ours"), PAIRS, ids=["grpc_service", "model_config"])
def test_every_message_and_field_matches(theirs: FileDescriptor, ours: FileDescriptor):
    assert ours.package == theirs.package == "inference"
    ours_by_name = {m.full_name: m for m in _messages(ours)}
    checked = 0
    for message in _messages(theirs):
        assert message.full_name in ours_by_name, f"message {message.full_name} missing"
        mine = ours_by_name[message.full_name]
        assert mine.GetOptions().map_entry == message.GetOptions().map_entry, message.full_name
        for field in message.fields:
            where = f"{message.full_name}.{field.name}"
            assert field.name in mine.fields_by_name, f"field {where} missing"
            ours_field = mine.fields_by_name[field.name]
            assert _field_signature(ours_field) == _field_signature(field), where
            checked += 1
    assert checked > 100  # the walk really saw the files


@pytest.mark.parametrize(("theirs", "ours"), PAIRS, ids=["grpc_service", "model_config"])
def test_every_enum_value_matches(theirs: FileDescriptor, ours: FileDescriptor):
    ours_by_name: dict[str, EnumDescriptor] = {e.full_name: e for e in _enums(ours)}
    for enum in _enums(theirs):
        assert enum.full_name in ours_by_name, f"enum {enum.full_name} missing"
        mine = {v.name: v.number for v in ours_by_name[enum.full_name].values}
        for value in enum.values:
            assert mine.get(value.name) == value.number, f"{enum.full_name}.{value.name}"


def test_service_methods_match():
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    ours = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert ours.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for method in theirs.methods:
        mine = ours.methods_by_name.get(method.name)
        assert mine is not None, f"rpc {method.name} missing"
        signature = (
            mine.input_type.full_name,
            mine.output_type.full_name,
            mine.client_streaming,
            mine.server_streaming,
        )
        assert signature == (
            method.input_type.full_name,
            method.output_type.full_name,
            method.client_streaming,
            method.server_streaming,
        ), method.name


def test_bytes_cross_between_the_two_builds():
    request = grpc_service_pb2.ModelInferRequest(model_name="m", model_version="1", id="r")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.parameters["p"].int64_param = 3
    request.outputs.add(name="y").parameters["classification"].int64_param = 2
    request.raw_input_contents.append(b"\x00" * 8)
    parsed = triton_service.ModelInferRequest.FromString(request.SerializeToString())
    assert parsed.SerializeToString(deterministic=True) == request.SerializeToString(
        deterministic=True
    )
    assert parsed.outputs[0].parameters["classification"].int64_param == 2


def test_our_stubs_live_in_our_own_pool():
    assert grpc_service_pb2.DESCRIPTOR.pool is POOL
    assert POOL.FindServiceByName("inference.GRPCInferenceService") is not None

"""ModelInfer's bytes-to-bytes lane (serving/wire.py) answers exactly as the general path.

Unit tests drive `Routes` with a real lenet5 ServedModel: which requests may become
routes, that a hit decodes the same input and batching key as the general path, and
that the assembled answer parses to the typed path's response. An end-to-end test
sends raw requests to a real server: the lane is taken, and a changed raw length, a
new id, an unload and a reload all answer as the general path would.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers import assert_fp32_close

from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving import triton_service, wire
from netc.serving.config import ModelConfig
from netc.serving.model import ServedModel
from netc.serving.server import BackgroundServer, ServerOptions
from netc.serving.tensors import common_request

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def lenet(repository):
    return ServedModel("lenet5", "1", repository / "lenet5" / "1" / "model.onnx", ModelConfig())


def _request(batch=1, *, id="", version="", outputs=(), size=32, seed=0, **changes):
    array = np.random.default_rng(seed).random((batch, 1, size, size), dtype=np.float32)
    request = pb.ModelInferRequest(model_name="lenet5", model_version=version, id=id)
    request.inputs.add(name="image", datatype="FP32", shape=array.shape)
    for name in outputs:
        request.outputs.add(name=name)
    request.raw_input_contents.append(array.tobytes())
    for key, value in changes.items():
        if key == "classification":
            request.outputs.add(name="fc3").parameters["classification"].int64_param = value
        elif key == "timeout":
            request.parameters["timeout"].int64_param = value
        elif key == "contents":
            request.inputs[0].contents.fp32_contents.extend(value)
    return request


def _general(model, request):
    """What the typed path decides: (common request, wanted outputs)."""
    wanted = triton_service._requested_outputs(request, model)
    return common_request(request, model.expected, model.info.max_batch_size), wanted


def _learned(lenet, request) -> wire.Routes:
    routes = wire.Routes()
    common, wanted = _general(lenet, request)
    _learn(routes, request, lenet, common, wanted)
    return routes


def _learn(routes, request, model, common, wanted):
    header = wire.Routes.header(request.SerializeToString())
    routes.learn(header, request, model, common, wanted)


def _match(routes, data, model_of):
    return routes.match(data, wire.Routes.header(data), model_of)


def _model_of(model):
    return lambda name, version: model


def test_fields_are_split_as_protobuf_wrote_them():
    data = _request(id="a").SerializeToString()
    fields = wire.split_fields(data)
    assert [tag >> 3 for tag, _, _ in fields] == [1, 3, 5, 7]
    assert [data[start:end] for _, start, end in fields[:2]] == [b"lenet5", b"a"]
    assert fields[-1][2] - fields[-1][1] == 4096  # the tensor, 1x1x32x32 floats
    assert wire.split_fields(data[:-1]) is None  # ends inside the tensor
    assert wire.split_fields(data[:1]) is None  # ends inside a tag
    assert wire.split_fields(b"\x08\x01" + data) is None  # a varint field: not this lane's
    assert wire.split_fields(b"\x82\x01\x00" + data) is None  # field 16: a two-byte tag
    assert wire.split_fields(b"") == []


def test_the_header_leaves_out_only_id_and_the_tensor():
    first = wire.Routes.header(_request(id="1", seed=1).SerializeToString())
    second = wire.Routes.header(_request(id="two", seed=2).SerializeToString())
    assert first[0] == second[0] and first[2] == b"1" and second[2] == b"two"
    others = [_request(2), _request(version="1"), _request(outputs=["fc3"]), _request(size=28)]
    keys = {wire.Routes.header(r.SerializeToString())[0] for r in others}
    assert len(keys) == 4 and first[0] not in keys


@pytest.mark.parametrize(
    "data",
    [
        _request(timeout=1000).SerializeToString(),  # parameters: the general path reads them
        _request().SerializeToString() + b":\x00",  # a second raw input
        pb.ModelInferRequest(model_name="lenet5").SerializeToString(),  # no raw input
        _request().SerializeToString() + b"\x1a\x01\xff",  # an id that is not UTF-8
    ],
    ids=["parameters", "two raw inputs", "no raw input", "id not UTF-8"],
)
def test_requests_outside_the_lane_have_no_header(data):
    assert wire.Routes.header(data) is None


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request(3, id="x7"),
        _request(16, version="1"),
        _request(2, outputs=["fc3"]),
    ],
    ids=["batch of 1", "batch of 3 with an id", "batch of 16, version 1", "output named"],
)
def test_a_hit_decodes_and_answers_as_the_general_path(lenet, request_):
    routes = _learned(lenet, request_)
    # a later request on the same header: another id and other pixels
    later = pb.ModelInferRequest()
    later.CopyFrom(request_)
    later.id = request_.id + "-later"
    later.raw_input_contents[0] = (
        np.random.default_rng(9).random(len(request_.raw_input_contents[0]) // 4, np.float32)
    ).tobytes()
    hit = _match(routes, later.SerializeToString(), _model_of(lenet))
    assert hit is not None
    (inputs, batch, key), wanted = _general(lenet, later)
    assert (hit.route.batch, hit.route.key, hit.id) == (batch, key, later.id.encode())
    np.testing.assert_array_equal(hit.inputs["image"], inputs["image"])
    results = lenet._run(hit.inputs)
    typed = triton_service._response(lenet, later.id, wanted, results)
    assert pb.ModelInferResponse.FromString(routes.response(hit, results)) == typed


def test_what_the_general_path_would_judge_again_is_never_a_hit(lenet):
    routes = _learned(lenet, _request())
    short = _request()
    short.raw_input_contents[0] = short.raw_input_contents[0][:100]
    assert _match(routes, short.SerializeToString(), _model_of(lenet)) is None  # its error
    assert _match(routes, _request(2).SerializeToString(), _model_of(lenet)) is None  # unseen
    other = ServedModel("lenet5", "1", lenet.path, ModelConfig())  # a reload
    assert _match(routes, _request().SerializeToString(), _model_of(other)) is None

    def unloaded(name, version):
        raise LookupError(name)

    assert _match(routes, _request().SerializeToString(), unloaded) is None


def test_requests_the_general_path_declines_or_answers_in_bytes_become_no_route(lenet):
    for request in (_request(17), _request(size=28), _request(classification=3)):
        common, wanted = _general(lenet, request)
        routes = wire.Routes()
        if common is not None:  # classification: common, but answered in BYTES
            _learn(routes, request, lenet, common, wanted)
        assert routes.routes == {}, request


def test_the_route_table_is_bounded_and_forgets_the_oldest(lenet, monkeypatch):
    monkeypatch.setattr(wire, "MAX_ROUTES", 3)
    routes = wire.Routes()
    for n in range(1, 6):
        request = _request(n)
        _learn(routes, request, lenet, *_general(lenet, request))
        assert len(routes.routes) == min(n, 3)
    assert [route.batch for route in routes.routes.values()] == [3, 4, 5]


def test_a_message_of_many_small_fields_is_left_to_the_parser():
    request = _request()
    request.outputs.extend(
        pb.ModelInferRequest.InferRequestedOutputTensor(name="fc3") for _ in range(50)
    )
    assert wire.Routes.header(request.SerializeToString()) is not None  # 53 fields
    flood = b"\x42\x00" * (wire.MAX_FIELDS + 1)  # empty unknown fields: parse, not walk
    assert wire.split_fields(flood) is None
    assert wire.split_fields(flood[:-2]) == [(0x42, 2 * i + 2, 2 * i + 2) for i in range(64)]


def test_a_long_header_is_never_remembered():
    long = pb.ModelInferRequest(model_name="m" * wire.MAX_HEADER)
    long.raw_input_contents.append(b"\0")
    assert wire.Routes.header(long.SerializeToString()) is None
    fits = pb.ModelInferRequest(model_name="m" * (wire.MAX_HEADER - 100))
    fits.raw_input_contents.append(b"\0")
    assert wire.Routes.header(fits.SerializeToString()) is not None


def test_a_route_does_not_keep_its_model_alive(repository):
    model = ServedModel("lenet5", "1", repository / "lenet5" / "1" / "model.onnx", ModelConfig())
    routes = _learned(model, _request())
    (route,) = routes.routes.values()
    del model
    assert route.model() is None


# End to end: raw bytes to a real server.


@pytest.fixture(scope="module")
def server(repository):
    options = ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    running = BackgroundServer(repository, options)
    yield running
    running.stop()


def test_the_server_takes_the_lane_and_answers_alike(server, lenet, monkeypatch):
    answered = []
    assemble = wire.Routes.response
    monkeypatch.setattr(
        wire.Routes, "response", lambda self, *a: answered.append(1) or assemble(self, *a)
    )
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary(INFER)
        for n in range(4):
            request = _request(2, id=f"r{n}", seed=n)
            reply = pb.ModelInferResponse.FromString(call(request.SerializeToString()))
            inputs, _, _ = _general(lenet, request)[0]
            expected = triton_service._response(
                lenet, request.id, lenet.every_output, lenet._run(inputs)
            )
            assert reply.id == request.id and reply.outputs == expected.outputs
            got = np.frombuffer(reply.raw_output_contents[0], np.float32)
            want = np.frombuffer(expected.raw_output_contents[0], np.float32)
            assert_fp32_close(got, want)
        assert len(answered) == 3  # the first request taught the route

        short = _request(2)
        short.raw_input_contents[0] = b"\0" * 100
        with pytest.raises(grpc.RpcError) as caught:
            call(short.SerializeToString())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "raw content has 100 bytes, expected 8192" in caught.value.details()

        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x42\x00" * 1_000_000)  # a million empty unknown fields: no model named
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.RpcError) as caught:
            call(b"\x0a\x09lenet")  # a field that ends before its length says
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in caught.value.details()

        server.call(server.running.repository.unload("lenet5"))
        with pytest.raises(grpc.RpcError) as caught:
            call(_request(2).SerializeToString())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        server.call(server.running.repository.load("lenet5"))
        reply = pb.ModelInferResponse.FromString(call(_request(2, id="back").SerializeToString()))
        assert reply.id == "back" and reply.outputs[0].shape == [2, 10]


def test_netc_wire_lane_0_sends_every_request_down_the_general_path(repository, monkeypatch):
    """The switch bench/serve.py's netc-nolane target uses: no route is learned or taken,
    and the answers are the general path's."""
    monkeypatch.setenv("NETC_WIRE_LANE", "0")
    headers = []
    monkeypatch.setattr(wire.Routes, "learn", lambda self, header, *a: headers.append(header))
    options = ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    running = BackgroundServer(repository, options)
    try:
        with grpc.insecure_channel(running.address) as channel:
            call = channel.unary_unary(INFER)
            for n in range(3):
                request = _request(2, id=f"r{n}", seed=n)
                reply = pb.ModelInferResponse.FromString(call(request.SerializeToString()))
                assert reply.id == request.id and len(reply.raw_output_contents) == 1
    finally:
        running.stop()
    assert headers == [None] * 3  # a request without a header is never a route

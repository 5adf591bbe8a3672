"""Triton's gRPC API end to end: a real server, driven by the stock tritonclient.

One server (lenet5 with labels, tinyseg) serves the module; a second, with a
1 MiB message limit and an empty repository, takes the oversized message and
the broken model. Every call tritonclient offers for the API we serve is used,
and every kind of bad request is checked for its status code and message.
"""

from __future__ import annotations

import queue
import shutil

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from helpers import assert_fp32_close

from netc.protos.generated import grpc_service_pb2 as pb
from netc.protos.generated import grpc_service_pb2_grpc as pb_grpc
from netc.serving.server import BackgroundServer, ServerOptions

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _options(**overrides) -> ServerOptions:
    return ServerOptions(**{"host": "127.0.0.1", "port": 0, "metrics_port": None, **overrides})


@pytest.fixture(scope="module")
def repo(repository, tmp_path_factory):
    """A copy of the exported repository, with class names and batching settings for lenet5."""
    root = tmp_path_factory.mktemp("triton") / "repo"
    shutil.copytree(repository, root)
    (root / "lenet5" / "config.yaml").write_text(
        f"labels: {LABELS}\ndynamic_batching: {{max_queue_delay_us: 300, "
        "preferred_batch_sizes: [4, 8]}\n"
    )
    return root


@pytest.fixture(scope="module")
def server(repo):
    running = BackgroundServer(repo, _options())
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.address) as c:
        yield c


def _session(repo, name):
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _input(name, array, datatype=None):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype or "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def _images(n=3, seed=0):
    return np.random.default_rng(seed).random((n, 1, 32, 32), dtype=np.float32)


def _fails(call, status: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    error = caught.value
    assert error.status() == f"StatusCode.{status}", (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), error.message()
    return error.message()


# Health and metadata.


def test_liveness_readiness_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lenet5") and client.is_model_ready("tinyseg", "1")
    assert not client.is_model_ready("lenet5", "7") and not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server.name == "netc" and "classification" in server.extensions
    meta = client.get_model_metadata("lenet5")
    assert (meta.name, list(meta.versions), meta.platform) == ("lenet5", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("image", "FP32", [-1, 1, 32, 32])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("fc3", "FP32", [-1, 10])
    ]
    as_json = client.get_model_metadata("tinyseg", "1", as_json=True)
    assert as_json["inputs"][0]["shape"] == ["-1", "3", "-1", "-1"]  # int64 as JSON strings


def test_model_config(client):
    config = client.get_model_config("lenet5").config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "lenet5",
        "onnxruntime_onnx",
        "onnxruntime",
        16,
    )
    (image,), (fc3,) = config.input, config.output
    assert (image.name, image.data_type, list(image.dims)) == ("image", 11, [1, 32, 32])
    assert (fc3.name, fc3.data_type, list(fc3.dims)) == ("fc3", 11, [10])  # 11: TYPE_FP32
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert config.dynamic_batching.max_queue_delay_microseconds == 300
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    seg = client.get_model_config("tinyseg", as_json=True)["config"]
    assert seg["input"][0]["dims"] == ["3", "-1", "-1"] and seg["input"][0]["data_type"] == (
        "TYPE_FP32"
    )


# Inference.


def test_infer_matches_onnxruntime(client, repo):
    images = _images()
    result = client.infer("lenet5", [_input("image", images)], request_id="req-1")
    (expected,) = _session(repo, "lenet5").run(None, {"image": images})
    assert_fp32_close(result.as_numpy("fc3"), expected, what="lenet5 fc3")
    response = result.get_response()
    assert (response.id, response.model_name, response.model_version) == ("req-1", "lenet5", "1")

    picture = np.random.default_rng(1).random((1, 3, 20, 24), dtype=np.float32)
    result = client.infer(
        "tinyseg", [_input("image", picture)], outputs=[grpcclient.InferRequestedOutput("upsample")]
    )
    (expected,) = _session(repo, "tinyseg").run(None, {"image": picture})
    assert result.as_numpy("upsample").shape == (1, 4, 20, 24)
    assert_fp32_close(result.as_numpy("upsample"), expected, what="tinyseg")


def test_classification_extension(client, repo):
    images = _images(2, seed=2)
    result = client.infer(
        "lenet5",
        [_input("image", images)],
        outputs=[grpcclient.InferRequestedOutput("fc3", class_count=3)],
    )
    top = result.as_numpy("fc3")
    assert top.shape == (2, 3) and result.get_output("fc3").datatype == "BYTES"
    (scores,) = _session(repo, "lenet5").run(None, {"image": images})
    for row, entries in zip(scores, top):
        parsed = [entry.decode().split(":") for entry in entries]
        indices = [int(index) for _, index, _ in parsed]
        assert indices == list(np.argsort(-row, kind="stable")[:3])
        assert [label for _, _, label in parsed] == [LABELS[i] for i in indices]
        assert_fp32_close([float(s) for s, _, _ in parsed], row[indices])


def test_async_infer(client, repo):
    answers: queue.Queue = queue.Queue()
    images = _images(1, seed=3)
    client.async_infer(
        "lenet5",
        [_input("image", images)],
        lambda result, error: answers.put((result, error)),
        request_id="a",
    )
    result, error = answers.get(timeout=10)
    assert error is None and result.get_response().id == "a"
    (expected,) = _session(repo, "lenet5").run(None, {"image": images})
    assert_fp32_close(result.as_numpy("fc3"), expected)


def test_stream_answers_each_request_and_reports_errors_in_band(server, repo):
    answers: queue.Queue = queue.Queue()
    images = [_images(1, seed=10 + i) for i in range(4)]
    with grpcclient.InferenceServerClient(server.address) as c:
        c.start_stream(lambda result, error: answers.put((result, error)))
        for i, image in enumerate(images):
            c.async_stream_infer("lenet5", [_input("image", image)], request_id=f"s{i}")
        c.async_stream_infer(
            "lenet5", [_input("image", image.astype(np.float64), "FP64")], request_id="bad"
        )
        c.async_stream_infer("lenet5", [_input("image", images[0])], request_id="after")
        got = [answers.get(timeout=10) for _ in range(6)]
        c.stop_stream()
    session = _session(repo, "lenet5")
    for i, (result, error) in enumerate(got[:4]):
        assert error is None and result.get_response().id == f"s{i}"
        assert_fp32_close(result.as_numpy("fc3"), session.run(None, {"image": images[i]})[0])
    result, error = got[4]
    assert result is None and "input 'image' has datatype FP64, expected FP32" in str(error)
    assert got[5][0].get_response().id == "after"  # the stream goes on after an error


def test_typed_contents_and_bytes_via_our_own_stub(server, repo):
    images = _images(1, seed=4)
    request = pb.ModelInferRequest(model_name="lenet5")
    request.inputs.add(
        name="image",
        datatype="FP32",
        shape=images.shape,
        contents=pb.InferTensorContents(fp32_contents=images.ravel()),
    )
    request.outputs.add(name="fc3").parameters["classification"].int64_param = 2
    with grpc.insecure_channel(server.address) as channel:
        response = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    (scores,) = _session(repo, "lenet5").run(None, {"image": images})
    (raw,) = response.raw_output_contents
    assert response.outputs[0].datatype == "BYTES" and list(response.outputs[0].shape) == [1, 2]
    first = raw[4 : 4 + int.from_bytes(raw[:4], "little")].decode()
    assert int(first.split(":")[1]) == int(np.argmax(scores[0]))


# Statistics and the repository.


def test_statistics(client):
    client.infer("tinyseg", [_input("image", np.zeros((2, 3, 8, 8), np.float32))])
    stats = client.get_inference_statistics("tinyseg").model_stats
    assert [(s.name, s.version) for s in stats] == [("tinyseg", "1")]
    assert stats[0].inference_count >= 2 and stats[0].execution_count >= 1
    assert stats[0].inference_stats.success.count >= 1 and stats[0].last_inference > 0
    assert stats[0].batch_stats[0].compute_infer.count >= 1
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} == {"lenet5", "tinyseg"}
    _fails(lambda: client.get_inference_statistics("nope"), "NOT_FOUND", "unknown model: 'nope'")


def test_repository_index_unload_and_load(client):
    index = client.get_model_repository_index().models
    assert [(m.name, m.version, m.state) for m in index] == [
        ("lenet5", "1", "READY"),
        ("tinyseg", "1", "READY"),
    ]
    client.unload_model("tinyseg")
    assert not client.is_model_ready("tinyseg")
    entry = next(m for m in client.get_model_repository_index().models if m.name == "tinyseg")
    assert (entry.state, entry.reason) == ("UNAVAILABLE", "unloaded")
    assert [
        m["name"]
        for m in client.get_model_repository_index(as_json=True)["models"]
        if m.get("state") == "READY"
    ] == ["lenet5"]
    _fails(
        lambda: client.infer("tinyseg", [_input("image", np.zeros((1, 3, 8, 8), np.float32))]),
        "UNAVAILABLE",
        "model 'tinyseg' is unavailable: unloaded",
    )
    client.load_model("tinyseg")
    assert client.is_model_ready("tinyseg") and client.is_server_ready()
    _fails(lambda: client.load_model("nope"), "NOT_FOUND", "no model 'nope'")
    _fails(lambda: client.unload_model("nope"), "NOT_FOUND", "no model 'nope'")
    _fails(
        lambda: client.load_model("lenet5", config="{}", files={"file:1/model.onnx": b"x"}),
        "UNIMPLEMENTED",
        "load parameters file:1/model.onnx are not supported",
    )


# Bad requests: each answered with its status and a message naming what is wrong.


def _bad_raw_length():
    tensor = _input("image", np.zeros((1, 1, 16, 16), np.float32))
    tensor.set_shape([1, 1, 32, 32])
    return [tensor]


BAD_REQUESTS = {
    "unknown model": (
        dict(model_name="lenet"),
        "NOT_FOUND",
        ["Request for unknown model: 'lenet' is not found", "did you mean 'lenet5'"],
    ),
    "unknown version": (
        dict(model_version="7"),
        "NOT_FOUND",
        ["model 'lenet5' has no version '7'", "loaded versions: 1"],
    ),
    "wrong dtype": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 1, 32, 32)), "FP64")]),
        "INVALID_ARGUMENT",
        ["input 'image' has datatype FP64, expected FP32"],
    ),
    "wrong shape": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 1, 28, 28), np.float32))]),
        "INVALID_ARGUMENT",
        ["input 'image' has shape [1, 1, 28, 28]", "expected [batch, 1, 32, 32]"],
    ),
    "wrong rank": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 32, 32), np.float32))]),
        "INVALID_ARGUMENT",
        ["input 'image' has shape [1, 32, 32]", "rank 4"],
    ),
    "missing input": (
        dict(inputs=lambda: []),
        "INVALID_ARGUMENT",
        ["missing input 'image' (FP32 [1, 32, 32])"],
    ),
    "extra input": (
        dict(
            inputs=lambda: [
                _input("image", _images(1)),
                _input("mask", np.zeros((1, 4), np.float32)),
            ]
        ),
        "INVALID_ARGUMENT",
        ["unexpected input 'mask'", "inputs are image"],
    ),
    "bad raw length": (
        dict(inputs=_bad_raw_length),
        "INVALID_ARGUMENT",
        ["input 'image': raw content has 1024 bytes, expected 4096 for FP32 [1, 1, 32, 32]"],
    ),
    "batch too large": (
        dict(inputs=lambda: [_input("image", _images(17))]),
        "INVALID_ARGUMENT",
        ["batch size 17 is outside 1..16"],
    ),
    "unknown output": (
        dict(outputs=lambda: [grpcclient.InferRequestedOutput("fc4")]),
        "INVALID_ARGUMENT",
        ["unknown output 'fc4'", "outputs are fc3"],
    ),
    "bad class count": (
        dict(outputs=lambda: [grpcclient.InferRequestedOutput("fc3", class_count=-1)]),
        "INVALID_ARGUMENT",
        ["classification count must be at least 1"],
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
def test_bad_requests(client, case):
    overrides, status, fragments = BAD_REQUESTS[case]
    arguments = {
        "model_name": "lenet5",
        "inputs": lambda: [_input("image", _images(1))],
        "model_version": "",
        "outputs": lambda: None,
        **overrides,
    }
    _fails(
        lambda: client.infer(
            arguments["model_name"],
            arguments["inputs"](),
            model_version=arguments["model_version"],
            outputs=arguments["outputs"](),
        ),
        status,
        *fragments,
    )
    assert client.is_server_live() and client.is_model_ready("lenet5")  # still serving


def test_unknown_model_in_every_model_call(client):
    for call in (
        client.get_model_metadata,
        client.get_model_config,
        client.get_inference_statistics,
    ):
        _fails(lambda call=call: call("nope"), "NOT_FOUND", "unknown model: 'nope'")
    _fails(lambda: client.get_model_config("lenet5", "2"), "NOT_FOUND", "no version '2'")


def test_unsupported_triton_features_are_unimplemented(client):
    _fails(client.get_system_shared_memory_status, "UNIMPLEMENTED", "shared memory")
    _fails(client.get_cuda_shared_memory_status, "UNIMPLEMENTED", "CUDA shared memory")


# Health and reflection.


def test_health_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, service


def test_reflection_lists_the_services(server):
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        pool = DescriptorPool(database)  # what grpcurl-style tools do to describe a call
        infer = pool.FindServiceByName("inference.GRPCInferenceService")
        classify = pool.FindServiceByName("netc.vision.VisionService")
    assert {
        "inference.GRPCInferenceService",
        "netc.vision.VisionService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    assert infer.methods_by_name["ModelInfer"].input_type.name == "ModelInferRequest"
    assert "Classify" in classify.methods_by_name


# A small server: the message limit, and a model that cannot load.


@pytest.fixture
def small_server(tmp_path):
    (tmp_path / "repo").mkdir()
    running = BackgroundServer(tmp_path / "repo", _options(max_message_mb=1))
    yield running
    running.stop()


def test_oversized_message_is_refused_and_server_goes_on(small_server):
    with grpcclient.InferenceServerClient(small_server.address) as c:
        big = np.zeros((1, 1, 512, 1024), np.float32)  # 2 MiB
        _fails(
            lambda: c.infer("lenet5", [_input("image", big)]),
            "RESOURCE_EXHAUSTED",
            "larger than max",
        )
        assert c.is_server_live()


def test_a_model_that_cannot_load_is_unavailable_with_its_reason(small_server):
    folder = small_server.running.repository.root / "broken" / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"not an onnx model")
    with grpcclient.InferenceServerClient(small_server.address) as c:
        _fails(
            lambda: c.load_model("broken"),
            "UNAVAILABLE",
            "model 'broken' is unavailable",
            "onnxruntime cannot load",
        )
        (entry,) = c.get_model_repository_index().models
        assert (entry.name, entry.state) == ("broken", "UNAVAILABLE")
        assert not c.is_model_ready("broken") and c.is_server_live()


def test_health_follows_unload_and_load(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = grpcclient.InferenceServerClient(server.address)
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)

        def status():
            return stub.Check(health_pb2.HealthCheckRequest()).status

        serving = health_pb2.HealthCheckResponse.SERVING
        assert status() == serving
        client.unload_model("tinyseg")  # an explicit unload is not a failure
        assert status() == serving and client.is_server_ready()
        client.load_model("tinyseg")
        assert status() == serving and client.is_model_ready("tinyseg")


def test_a_stream_reads_ahead_of_its_answers_only_so_far(monkeypatch):
    """A client that stops reading answers stops being read: gRPC's flow control then
    holds it back, instead of the server buffering every answer."""
    import asyncio

    from netc.serving import triton_service

    monkeypatch.setattr(triton_service, "STREAM_IN_FLIGHT", 3)
    read = []

    async def requests():
        for i in range(100):
            read.append(i)
            yield pb.ModelInferRequest(id=str(i))

    async def answer(self, request, context):
        return pb.ModelStreamInferResponse(infer_response=pb.ModelInferResponse(id=request.id))

    monkeypatch.setattr(triton_service.TritonService, "_stream_answer", answer)

    async def scenario():
        stream = triton_service.TritonService(None).ModelStreamInfer(requests(), None)
        first = await anext(stream)
        await asyncio.sleep(0.05)  # the client reads nothing more for a while
        taken = len(read)
        rest = [answer async for answer in stream]
        return first, taken, rest

    first, taken, rest = asyncio.run(scenario())
    assert first.infer_response.id == "0" and taken <= 3 + 2
    assert [a.infer_response.id for a in rest] == [str(i) for i in range(1, 100)]


def test_an_unreadable_stream_message_ends_the_stream_with_invalid_argument(server):
    with grpc.insecure_channel(server.address) as channel:
        call = channel.stream_stream("/inference.GRPCInferenceService/ModelStreamInfer")
        good = pb.ModelInferRequest(model_name="lenet5", id="good")
        good.inputs.add(name="image", datatype="FP32", shape=[1, 1, 32, 32])
        good.raw_input_contents.append(_images(1).tobytes())
        answers = call(iter([good.SerializeToString(), b"\xff\xff\xff"]))
        with pytest.raises(grpc.RpcError) as caught:
            list(answers)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "could not be read as a ModelInferRequest" in caught.value.details()


def _raw_call(server, request: pb.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as caught:
            call(request.SerializeToString())
    return caught.value


def test_inputs_the_model_does_not_take_are_refused_before_decoding(server):
    many = pb.ModelInferRequest(model_name="lenet5")
    for i in range(20_000):
        many.inputs.add(name=f"i{i}", datatype="FP32", shape=[0])
    error = _raw_call(server, many)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unexpected input 'i0'" in error.details()

    words = pb.ModelInferRequest(model_name="lenet5")
    words.inputs.add(name="image", datatype="BYTES", shape=[1_000_000])
    words.raw_input_contents.append(b"\0" * 4_000_000)  # a million empty strings
    error = _raw_call(server, words)
    assert "input 'image' has datatype BYTES, expected FP32" in error.details()


def test_a_huge_name_still_gets_its_error_message(server):
    error = _raw_call(server, pb.ModelInferRequest(model_name="m" * 20_000))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # not lost to the trailer size limit
    assert error.details().startswith("Request for unknown model: 'mmm")
    assert "(message cut)" in error.details()
    image = pb.ModelInferRequest(model_name="lenet5")
    image.inputs.add(name="x" * 20_000, datatype="FP32", shape=[1, 1, 32, 32])
    image.raw_input_contents.append(_images(1).tobytes())
    error = _raw_call(server, image)
    assert "unexpected input 'xxx" in error.details() and "(20000 characters)" in error.details()

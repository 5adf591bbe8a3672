"""BYTES tensors end to end: string models served to the stock tritonclient.

onnxruntime's string tensors hold text: the server must hand it Python str (a bytes
object would reach the model as its repr, "b'hello'"), refuse bytes that are not
UTF-8, and send strings back as length-prefixed UTF-8. Every way a request can take
is driven: raw contents, the explicit `bytes_contents` field, ModelStreamInfer, a
batch the batcher merged from several requests, the one-pass decoding of a numeric
input with a string output, and the classification extension.
"""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from netc.serving.server import BackgroundServer, ServerOptions

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

WORDS = [b"hello", b"", "h\u00e9llo w\u00f6rld \u2713 \U0001f600".encode(), b"a\x00b", b" 42 "]


def _model(nodes, inputs, outputs) -> bytes:
    """A tiny ONNX model; IR 8 / opset 17, which every onnxruntime here runs."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _simple_string() -> bytes:
    """Triton's `simple_string` example model: INPUT0 and INPUT1 are [batch, 16] numbers
    written as strings; OUTPUT0 is their sum and OUTPUT1 their difference, as strings."""
    cast = [
        helper.make_node("Cast", [f"INPUT{i}"], [f"n{i}"], to=TensorProto.INT32) for i in (0, 1)
    ]
    math_ = [
        helper.make_node("Add", ["n0", "n1"], ["sum"]),
        helper.make_node("Sub", ["n0", "n1"], ["diff"]),
    ]
    back = [
        helper.make_node("Cast", [src], [f"OUTPUT{i}"], to=TensorProto.STRING)
        for i, src in enumerate(["sum", "diff"])
    ]
    shape = ["batch", 16]
    return _model(
        [*cast, *math_, *back],
        [(f"INPUT{i}", TensorProto.STRING, shape) for i in (0, 1)],
        [(f"OUTPUT{i}", TensorProto.STRING, shape) for i in (0, 1)],
    )


MODELS = {
    # identity over strings of any length per item
    "echo": (
        _model(
            [helper.make_node("Identity", ["TEXT"], ["ECHO"])],
            [("TEXT", TensorProto.STRING, ["batch", "n"])],
            [("ECHO", TensorProto.STRING, ["batch", "n"])],
        ),
        "max_batch_size: 4\ndynamic_batching: {max_queue_delay_us: 2000000}\n",
    ),
    # string -> int64: fails (stoll) on "b'1'", the repr a bytes object becomes
    "parse": (
        _model(
            [helper.make_node("Cast", ["TEXT"], ["NUMBER"], to=TensorProto.INT64)],
            [("TEXT", TensorProto.STRING, ["batch", 4])],
            [("NUMBER", TensorProto.INT64, ["batch", 4])],
        ),
        "max_batch_size: 8\n",
    ),
    # int64 -> string: a numeric input the one-pass decoding (common_request) takes
    "format": (
        _model(
            [helper.make_node("Cast", ["NUMBER"], ["TEXT"], to=TensorProto.STRING)],
            [("NUMBER", TensorProto.INT64, ["batch", 3])],
            [("TEXT", TensorProto.STRING, ["batch", 3])],
        ),
        "max_batch_size: 8\n",
    ),
    "simple_string": (_simple_string(), "max_batch_size: 8\n"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("strings")
    for name, (model, config) in MODELS.items():
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.onnx").write_bytes(model)
        (root / name / "config.yaml").write_text(config)
    running = BackgroundServer(root, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.address) as c:
        yield c


def _texts(rows) -> np.ndarray:
    array = np.empty((len(rows), len(rows[0])), dtype=np.object_)
    array[:] = rows
    return array


def _input(name, array, datatype="BYTES"):
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _fails(call, status: str, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    error = caught.value
    assert error.status() == f"StatusCode.{status}", (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), error.message()
    return error.message()


def test_strings_come_back_as_sent(client):
    """Empty strings, non-ASCII UTF-8, a NUL inside, a batch of two."""
    sent = _texts([WORDS, WORDS[::-1]])
    result = client.infer("echo", [_input("TEXT", sent)])
    got = result.as_numpy("ECHO")
    assert result.get_output("ECHO").datatype == "BYTES"
    assert got.shape == (2, len(WORDS)) and got.tolist() == sent.tolist()


def test_tritons_simple_string_example(client):
    """What simple_grpc_string_infer_client.py does, at batch 1 and batch 3."""
    for batch in (1, 3):
        numbers = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
        ones = np.ones_like(numbers)
        as_text = np.vectorize(lambda n: str(n).encode(), otypes=[np.object_])
        result = client.infer(
            "simple_string", [_input("INPUT0", as_text(numbers)), _input("INPUT1", as_text(ones))]
        )
        total = result.as_numpy("OUTPUT0").astype(np.bytes_).astype(np.int32)
        difference = result.as_numpy("OUTPUT1").astype(np.bytes_).astype(np.int32)
        assert np.array_equal(total, numbers + 1) and np.array_equal(difference, numbers - 1)


def test_cast_from_strings_reads_the_text(client):
    sent = _texts([[b"1", b"-2", b"30", b"4"], [b"0", b"9", b"123456789012", b"-7"]])
    result = client.infer("parse", [_input("TEXT", sent)])
    assert result.as_numpy("NUMBER").tolist() == [[1, -2, 30, 4], [0, 9, 123456789012, -7]]


def test_explicit_bytes_contents(server):
    """What grpc_explicit_byte_content_client.py does: strings in `bytes_contents`,
    through tritonclient's own protobuf stubs."""
    request = service_pb2.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, len(WORDS)])
    tensor.contents.bytes_contents.extend(WORDS)
    with grpc.insecure_channel(server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    (raw,) = response.raw_output_contents
    assert response.outputs[0].datatype == "BYTES"
    assert list(response.outputs[0].shape) == [1, len(WORDS)]
    got, offset = [], 0
    while offset < len(raw):
        length = int.from_bytes(raw[offset : offset + 4], "little")
        got.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    assert got == WORDS


def test_bytes_that_are_not_utf8_are_refused_by_element(client, server):
    sent = _texts([[b"ok", b"fine"], [b"good", b"caf\xe9"]])
    _fails(
        lambda: client.infer("echo", [_input("TEXT", sent)]),
        "INVALID_ARGUMENT",
        "input 'TEXT'",
        "element [1, 1]",
        "not valid UTF-8",
    )
    request = service_pb2.ModelInferRequest(model_name="echo")
    tensor = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 2])
    tensor.contents.bytes_contents.extend([b"\xff", b"x"])
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'TEXT'" in caught.value.details() and "element [0, 0]" in caught.value.details()


def test_stream_carries_strings(server):
    answers: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(server.address) as c:
        c.start_stream(lambda result, error: answers.put((result, error)))
        for i, word in enumerate(WORDS):
            c.async_stream_infer("echo", [_input("TEXT", _texts([[word]]))], request_id=f"s{i}")
        c.async_stream_infer(
            "echo", [_input("TEXT", _texts([[b"\xc3"]]))], request_id="bad"
        )  # a UTF-8 sequence cut short
        got = [answers.get(timeout=10) for _ in range(len(WORDS) + 1)]
        c.stop_stream()
    for word, (result, error) in zip(WORDS, got):
        assert error is None and result.as_numpy("ECHO").tolist() == [[word]]
    assert got[-1][0] is None and "not valid UTF-8" in str(got[-1][1])


def test_batched_string_requests_each_get_their_own_answer(client, server):
    """Four concurrent requests of batch 1 fill echo's batch of 4: merged, run, split."""
    before = _batches(client, 4)
    results, barrier = {}, threading.Barrier(4)

    def send(i: int) -> None:
        barrier.wait()
        words = _texts([[f"request {i} \u00e9".encode(), WORDS[i]]])
        results[i] = client.infer("echo", [_input("TEXT", words)]).as_numpy("ECHO").tolist()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for i in range(4):
        assert results[i] == [[f"request {i} \u00e9".encode(), WORDS[i]]]
    assert _batches(client, 4) == before + 1


def _batches(client, size: int) -> int:
    """How many batches of `size` echo has run so far."""
    stats = client.get_inference_statistics("echo", as_json=True)["model_stats"][0]
    for entry in stats.get("batch_stats", []):
        if int(entry["batch_size"]) == size:
            return int(entry["compute_infer"].get("count", 0))
    return 0


def test_string_outputs_of_a_numeric_request_sent_again(client):
    """A numeric input may become a route answered from bytes: the same header sent
    again must still get its strings, encoded per element."""
    for numbers in ([[1, -20, 300]], [[0, 7, -1]], [[5, 5, 5]]):
        sent = np.array(numbers, dtype=np.int64)
        result = client.infer("format", [_input("NUMBER", sent, "INT64")])
        assert result.as_numpy("TEXT").tolist() == [[str(n).encode() for n in numbers[0]]]


def test_classification_of_strings(client):
    """Top-k of a number parsed from text works; top-k of text itself is refused."""
    sent = _texts([[b"3", b"10", b"-1", b"7"]])
    result = client.infer(
        "parse",
        [_input("TEXT", sent)],
        outputs=[grpcclient.InferRequestedOutput("NUMBER", class_count=2)],
    )
    assert result.as_numpy("NUMBER").tolist() == [[b"10:1", b"7:3"]]
    _fails(
        lambda: client.infer(
            "echo",
            [_input("TEXT", sent)],
            outputs=[grpcclient.InferRequestedOutput("ECHO", class_count=2)],
        ),
        "INVALID_ARGUMENT",
        "output 'ECHO'",
        "BYTES",
    )

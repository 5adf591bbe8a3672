"""KServe v2 REST end to end: a real server's REST port, driven by the stock tritonclient.http.

Every call tritonclient.http offers for the API netc serves, with JSON and with binary
tensor data; the same catalogue of bad requests as over gRPC (test_triton_service.py),
each answered with the HTTP status of gRPC's code and the same message.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import pytest
from helpers import assert_fp32_close

from netc.serving.server import BackgroundServer, ServerOptions

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

# tritonclient.http's __del__ closes the client again, which fails when the garbage
# collector runs it on another thread (a server's): clients are kept until exit.
KEPT: list = []

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def http_options(**overrides) -> ServerOptions:
    settings = {"host": "127.0.0.1", "port": 0, "metrics_port": None, "http_port": 0}
    return ServerOptions(**{**settings, **overrides})


@pytest.fixture(scope="module")
def client(http_url):
    c = httpclient.InferenceServerClient(http_url)
    KEPT.append(c)
    return c


def _session(repo, name):
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _input(name, array, datatype="FP32", binary=True):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _images(n=3, seed=0):
    return np.random.default_rng(seed).random((n, 1, 32, 32), dtype=np.float32)


def _fails(call, status: int, *fragments: str) -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    error = caught.value
    assert error.status() == str(status), (error.status(), error.message())
    for fragment in fragments:
        assert fragment in error.message(), error.message()
    return error.message()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lenet5") and client.is_model_ready("tinyseg", "1")
    assert not client.is_model_ready("lenet5", "7") and not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "netc" and "classification" in server["extensions"]
    meta = client.get_model_metadata("lenet5")
    assert (meta["name"], meta["versions"], meta["platform"]) == (
        "lenet5",
        ["1"],
        "onnxruntime_onnx",
    )
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 32, 32]}]
    assert meta["outputs"] == [{"name": "fc3", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("tinyseg", "1")["inputs"][0]["shape"] == [-1, 3, -1, -1]


def test_model_config(client):
    config = client.get_model_config("lenet5")
    assert (config["name"], config["backend"], config["max_batch_size"]) == (
        "lenet5",
        "onnxruntime",
        16,
    )
    assert config["input"][0]["dims"] == [1, 32, 32]  # numbers, as Triton writes them
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 300
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert client.get_model_config("tinyseg", "1")["input"][0]["dims"] == [3, -1, -1]


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_matches_onnxruntime(client, http_repo, binary_in, binary_out):
    images = _images()
    (expected,) = _session(http_repo, "lenet5").run(None, {"image": images})
    result = client.infer(
        "lenet5",
        [_input("image", images, binary=binary_in)],
        outputs=[httpclient.InferRequestedOutput("fc3", binary_data=binary_out)],
        request_id="r1",
    )
    assert_fp32_close(result.as_numpy("fc3"), expected)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "lenet5",
        "1",
        "r1",
    )
    assert ("parameters" in response["outputs"][0]) == binary_out  # binary_data_size
    # no outputs named: every output, binary (tritonclient sets binary_data_output)
    every = client.infer("lenet5", [_input("image", images, binary=binary_in)])
    assert_fp32_close(every.as_numpy("fc3"), expected)


def test_open_sized_model_and_nested_json_data(client, http_repo):
    """tinyseg takes any H and W; Triton's JSON data may also come nested."""
    image = np.random.default_rng(1).random((1, 3, 24, 40), dtype=np.float32)
    (expected,) = _session(http_repo, "tinyseg").run(None, {"image": image})
    result = client.infer("tinyseg", [_input("image", image)])
    assert_fp32_close(result.as_numpy(result.get_response()["outputs"][0]["name"]), expected)
    body = {"inputs": [{"name": "image", "shape": [1, 3, 24, 40], "datatype": "FP32"}]}
    body["inputs"][0]["data"] = image.tolist()  # nested lists
    answer = _post(client, "/v2/models/tinyseg/infer", json.dumps(body).encode())
    output = answer["outputs"][0]
    assert output["shape"] == list(expected.shape)
    assert_fp32_close(np.array(output["data"], np.float32).reshape(expected.shape), expected)


def _post(client, path, body: bytes, headers=None):
    request = urllib.request.Request(
        f"http://{client._parsed_url.netloc}{path}", data=body, headers=headers or {}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension(client, http_repo, binary):
    images = _images(2)
    (scores,) = _session(http_repo, "lenet5").run(None, {"image": images})
    result = client.infer(
        "lenet5",
        [_input("image", images)],
        outputs=[httpclient.InferRequestedOutput("fc3", binary_data=binary, class_count=3)],
    )
    top = result.as_numpy("fc3")
    assert top.shape == (2, 3)
    for row, item in zip(top, scores):
        best = np.argsort(-item, kind="stable")[:3]
        texts = [x.decode() if isinstance(x, bytes) else x for x in row]
        assert [int(t.split(":")[1]) for t in texts] == list(best)
        assert [t.split(":")[2] for t in texts] == [LABELS[i] for i in best]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, http_repo, algorithm):
    """tritonclient.http's request_compression_algorithm: the body arrives compressed."""
    images = _images(2, seed=5)
    (expected,) = _session(http_repo, "lenet5").run(None, {"image": images})
    result = client.infer(
        "lenet5", [_input("image", images)], request_compression_algorithm=algorithm
    )
    assert_fp32_close(result.as_numpy("fc3"), expected)


def test_async_infer(client, http_repo):
    images = _images(4, seed=3)
    (expected,) = _session(http_repo, "lenet5").run(None, {"image": images})
    pending = [client.async_infer("lenet5", [_input("image", images[i : i + 1])]) for i in range(4)]
    got = np.concatenate([p.get_result().as_numpy("fc3") for p in pending])
    assert_fp32_close(got, expected)


def test_statistics_count_http_inferences(client):
    before = client.get_inference_statistics("lenet5")["model_stats"][0]
    client.infer("lenet5", [_input("image", _images(2))])
    after = client.get_inference_statistics("lenet5", "1")["model_stats"][0]
    assert after["inference_stats"]["success"]["count"] == (
        before["inference_stats"]["success"]["count"] + 1
    )
    assert after["inference_count"] == before["inference_count"] + 2
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    every = client.get_inference_statistics()["model_stats"]
    assert {(s["name"], s["version"]) for s in every} == {("lenet5", "1"), ("tinyseg", "1")}


def test_repository_index_unload_and_load(client):
    index = client.get_model_repository_index()
    assert [(m["name"], m["version"], m["state"]) for m in index] == [
        ("lenet5", "1", "READY"),
        ("tinyseg", "1", "READY"),
    ]
    client.unload_model("tinyseg")
    assert not client.is_model_ready("tinyseg")
    entry = next(m for m in client.get_model_repository_index() if m["name"] == "tinyseg")
    assert (entry["state"], entry["reason"]) == ("UNAVAILABLE", "unloaded")
    _fails(
        lambda: client.infer("tinyseg", [_input("image", np.zeros((1, 3, 8, 8), np.float32))]),
        503,
        "model 'tinyseg' is unavailable: unloaded",
    )
    client.load_model("tinyseg")
    assert client.is_model_ready("tinyseg") and client.is_server_ready()
    _fails(lambda: client.load_model("nope"), 404, "no model 'nope'")
    _fails(lambda: client.unload_model("nope"), 404, "no model 'nope'")
    _fails(
        lambda: client.load_model("lenet5", config="{}", files={"file:1/model.onnx": b"x"}),
        501,
        "load parameters file:1/model.onnx are not supported",
    )


# Bad requests: gRPC's catalogue (test_triton_service.py), the same messages.


def _bad_raw_length():
    tensor = _input("image", np.zeros((1, 1, 16, 16), np.float32))
    tensor.set_shape([1, 1, 32, 32])
    return [tensor]


BAD_REQUESTS = {
    "unknown model": (
        dict(model_name="lenet"),
        404,
        ["Request for unknown model: 'lenet' is not found", "did you mean 'lenet5'"],
    ),
    "unknown version": (dict(model_version="7"), 404, ["model 'lenet5' has no version '7'"]),
    "wrong dtype": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 1, 32, 32)), "FP64")]),
        400,
        ["input 'image' has datatype FP64, expected FP32"],
    ),
    "wrong dtype, JSON": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 1, 32, 32)), "FP64", binary=False)]),
        400,
        ["input 'image' has datatype FP64, expected FP32"],
    ),
    "wrong shape": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 1, 28, 28), np.float32))]),
        400,
        ["input 'image' has shape [1, 1, 28, 28]", "expected [batch, 1, 32, 32]"],
    ),
    "wrong rank": (
        dict(inputs=lambda: [_input("image", np.zeros((1, 32, 32), np.float32))]),
        400,
        ["input 'image' has shape [1, 32, 32]", "rank 4"],
    ),
    "missing input": (dict(inputs=lambda: []), 400, ["missing input 'image' (FP32 [1, 32, 32])"]),
    "extra input": (
        dict(
            inputs=lambda: [
                _input("image", _images(1)),
                _input("mask", np.zeros((1, 4), np.float32)),
            ]
        ),
        400,
        ["unexpected input 'mask'", "inputs are image"],
    ),
    "bad raw length": (
        dict(inputs=_bad_raw_length),
        400,
        ["input 'image': raw content has 1024 bytes, expected 4096 for FP32 [1, 1, 32, 32]"],
    ),
    "batch too large": (
        dict(inputs=lambda: [_input("image", _images(17))]),
        400,
        ["batch size 17 is outside 1..16"],
    ),
    "unknown output": (
        dict(outputs=lambda: [httpclient.InferRequestedOutput("fc4")]),
        400,
        ["unknown output 'fc4'", "outputs are fc3"],
    ),
    "bad class count": (
        dict(outputs=lambda: [httpclient.InferRequestedOutput("fc3", class_count=-1)]),
        400,
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


RAW_BODIES = {  # what tritonclient would never send, sent as is
    "not JSON": (b"{inputs", None, "the body is not a JSON inference request"),
    "a JSON list": (b"[]", None, "the inference request is a JSON list, expected an object"),
    "no data": (
        b'{"inputs":[{"name":"image","shape":[1,1,32,32],"datatype":"FP32"}]}',
        None,
        "input 'image': no data",
    ),
    "too few JSON values": (
        b'{"inputs":[{"name":"image","shape":[1,1,32,32],"datatype":"FP32","data":[1,2]}]}',
        None,
        "input 'image': \"data\" holds 2 values, expected 1024 for FP32 [1, 1, 32, 32]",
    ),
    "a string for a number": (
        b'{"inputs":[{"name":"image","shape":[1,1,1,2],"datatype":"FP32","data":[1,"x"]}]}',
        None,
        "input 'image': JSON data holds 'x', not a FP32 value",
    ),
    "shape not a list": (
        b'{"inputs":[{"name":"image","shape":"1x32","datatype":"FP32","data":[]}]}',
        None,
        "input 'image': shape must be a list of integers, found '1x32'",
    ),
    "negative dimension": (
        b'{"inputs":[{"name":"image","shape":[-1,1,32,32],"datatype":"FP32","data":[]}]}',
        None,
        "input 'image': shape [-1, 1, 32, 32] has a negative dimension",
    ),
    "header length past the body": (b"{}", "99", "Inference-Header-Content-Length is '99'"),
    "binary sizes past the data": (
        b'{"inputs":[{"name":"image","shape":[1,1,32,32],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":4096}}]}' + b"\0" * 8,
        "SPLIT",
        "binary_data_size 4096 at byte 0 of the binary data, which holds 8 bytes",
    ),
}


@pytest.mark.parametrize("case", RAW_BODIES, ids=list(RAW_BODIES))
def test_malformed_bodies_are_400_with_a_reason(client, case):
    body, header_length, fragment = RAW_BODIES[case]
    headers = {"Content-Type": "application/json"}
    if header_length == "SPLIT":
        header_length = str(body.index(b"}]}") + 3)
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    with pytest.raises(urllib.error.HTTPError) as caught:
        _post(client, "/v2/models/lenet5/infer", body, headers)
    assert caught.value.code == 400
    message = json.loads(caught.value.read())["error"]
    assert fragment in message, message


def test_unknown_model_in_every_model_call(client):
    for call in (
        client.get_model_metadata,
        client.get_model_config,
        client.get_inference_statistics,
    ):
        _fails(lambda call=call: call("nope"), 404, "unknown model: 'nope'")
    _fails(lambda: client.get_model_config("lenet5", "2"), 404, "no version '2'")


def test_unsupported_triton_features_are_501_and_unknown_paths_404(client):
    _fails(client.get_system_shared_memory_status, 501, "shared memory")
    _fails(client.get_cuda_shared_memory_status, 501, "CUDA shared memory")
    _fails(client.get_trace_settings, 501, "tracing")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"http://{client._parsed_url.netloc}/v3/nothing", timeout=10)
    assert caught.value.code == 404
    assert json.loads(caught.value.read()) == {"error": "no such endpoint: GET /v3/nothing"}


def test_oversized_body_is_413_and_the_server_goes_on(http_repo, tmp_path):
    """The body limit is gRPC's message limit (--max-message-mb)."""
    root = tmp_path / "repo"
    shutil.copytree(http_repo / "lenet5", root / "lenet5")
    server = BackgroundServer(root, http_options(max_message_mb=1))
    try:
        c = httpclient.InferenceServerClient(f"127.0.0.1:{server.running.http_port}")
        KEPT.append(c)
        big = np.zeros((1, 1, 512, 1024), np.float32)  # 2 MiB
        _fails(
            lambda: c.infer("lenet5", [_input("image", big)]),
            413,
            "is over this server's 1 MiB limit (netc serve --max-message-mb)",
        )
        assert c.is_server_live()
        assert c.infer("lenet5", [_input("image", _images(1))]).as_numpy("fc3").shape == (
            1,
            10,
        )
    finally:
        server.stop()

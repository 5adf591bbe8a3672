"""`netc serve` as a user runs it: a real process, its flags, its readiness, its shutdown."""

import re
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from netc.serving.client import RequestFailed, VisionClient

# --no-http: these servers run beside others (tests/serving/http/ tests the REST port)
SERVE = [sys.executable, "-m", "netc", "serve", "--no-http", "--repository"]


@pytest.fixture
def serve(repository):
    """Start `netc serve` on a free port with extra flags; yields (process, address)."""
    started = []

    def start(*flags: str):
        process = subprocess.Popen(
            [*SERVE, str(repository), "--host", "127.0.0.1", "--port", "0", "--no-metrics", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"netc serving gRPC on ([\d.]+:\d+)", line):
                return process, match.group(1)
        raise AssertionError("netc serve did not start:\n" + "".join(lines))

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_reports_ready_and_stops_cleanly_on_sigterm(serve):
    process, address = serve()
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "Traceback" not in process.stderr.read()


def test_max_image_pixels_flag_limits_pictures(serve):
    _, address = serve("--max-image-pixels", "1000")
    with VisionClient(address) as client:
        assert client.segment(np.zeros((20, 30), np.uint8), "tinyseg")[0].shape == (20, 30)
        with pytest.raises(RequestFailed) as error:
            client.segment(np.zeros((50, 70), np.uint8), "tinyseg")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "70x50" in str(error.value) and "at most 0.001 megapixels" in str(error.value)


def test_bad_pixel_limit_is_a_usage_error(repository):
    result = subprocess.run(
        [*SERVE, str(repository), "--max-image-pixels", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--max-image-pixels must be at least 1, found 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_ports_are_clear_errors(repository):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flags, says in (
            (["--port", port, "--no-metrics"], f"cannot listen on 127.0.0.1:{port}"),
            (["--port", "0", "--metrics-port", port], f"cannot serve metrics on 127.0.0.1:{port}"),
        ):
            result = subprocess.run(
                [*SERVE, str(repository), "--host", "127.0.0.1", *flags],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 2, result.stderr
            assert says in result.stderr and "Traceback" not in result.stderr


def test_a_busy_port_gets_netc_s_one_line_only(repository):
    """gRPC's C core logs a failed bind itself ("E1207 ... add_port.cc:83] Failed to add
    port ..."); the user must see netc's message alone, with the system's reason."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SERVE, str(repository), "--host", "127.0.0.1", "--port", str(port), "--no-metrics"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot start the server: cannot listen on 127.0.0.1:{port}: "
        "Address already in use\n"
    )


def _onnx(node, inputs, outputs, initializers=()) -> bytes:
    from onnx import helper

    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(*spec) for spec in inputs],
        [helper.make_tensor_value_info(*spec) for spec in outputs],
        initializer=list(initializers),
    )
    opsets = [helper.make_opsetid("", 17)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


@pytest.fixture
def noisy_repository(tmp_path):
    """Models onnxruntime logs about on its own: an unused initializer (a W line at each
    load), a convolution too wide for the warm-up's 64x64 (an E line for the failed run),
    a string-to-number Cast (an E line for every text that is not a number)."""
    from onnx import TensorProto, numpy_helper
    from onnx.helper import make_node

    f32 = TensorProto.FLOAT
    models = {
        "spare": _onnx(
            make_node("Identity", ["x"], ["y"]),
            [("x", f32, ["batch", 3])],
            [("y", f32, ["batch", 3])],
            [numpy_helper.from_array(np.ones(3, np.float32), "unused")],
        ),
        "wide": _onnx(
            make_node("Conv", ["x", "k"], ["y"]),
            [("x", f32, ["batch", 1, "h", "w"])],
            [("y", f32, ["batch", 1, "h2", "w2"])],
            [numpy_helper.from_array(np.ones((1, 1, 100, 100), np.float32), "k")],
        ),
        "parse": _onnx(
            make_node("Cast", ["x"], ["y"], to=TensorProto.INT64),
            [("x", TensorProto.STRING, ["batch", 2])],
            [("y", TensorProto.INT64, ["batch", 2])],
        ),
    }
    for name, model in models.items():
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(model)
    return tmp_path


def test_stderr_holds_netc_s_lines_only(noisy_repository):
    """onnxruntime's own log lines (W for the unused initializer, E for each failed run)
    stay off the server's stderr: netc says what failed, to the client that asked."""
    tritonclient = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    noisy_models = sorted(path.name for path in noisy_repository.iterdir())
    process = subprocess.Popen(
        [*SERVE, str(noisy_repository), "--host", "127.0.0.1", "--port", "0", "--no-metrics"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not (line := process.stderr.readline()).startswith("netc serving"):
            assert line, "netc serve ended early:\n" + "".join(lines)
            lines.append(line)
        address = re.search(r"on ([\d.]+:\d+)", line).group(1)
        assert sorted(lines) == [f"model {name} version 1 READY\n" for name in noisy_models]
        with tritonclient.InferenceServerClient(address) as client:
            words = tritonclient.InferInput("x", [1, 2], "BYTES")
            words.set_data_from_numpy(np.array([[b"12", b"twelve"]], dtype=np.object_))
            with pytest.raises(InferenceServerException, match="its Cast node: stoll"):
                client.infer("parse", [words])
            picture = tritonclient.InferInput("x", [1, 1, 8, 8], "FP32")
            picture.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
            with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
                client.infer("wide", [picture])
    finally:
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=30)[1]
    assert process.returncode == 0
    assert rest == ""

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

SERVE = [sys.executable, "-m", "netc", "serve", "--repository"]


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

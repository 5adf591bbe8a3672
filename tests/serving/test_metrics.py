"""Observability: Prometheus metrics (names, values, histograms, one registry per server),
ModelStatistics as Triton's perf_analyzer reads it, what misbehaving HTTP clients get,
and the lifecycle log lines."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from netc.serving import events
from netc.serving.metrics import start_metrics_server
from netc.serving.repository import ModelRepository
from netc.serving.server import BackgroundServer, ServerOptions
from netc.serving.stats import DURATION_BOUNDS_NS, Histogram

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

IMAGE = np.zeros((1, 1, 32, 32), np.float32)


@pytest.fixture(scope="module")
def repo(repository, tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics") / "repo"
    shutil.copytree(repository / "lenet5", root / "lenet5")
    return root


def _server(repo: Path) -> BackgroundServer:
    return BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=0))


def _scrape(server: BackgroundServer, path: str = "/metrics") -> str:
    url = f"http://127.0.0.1:{server.running.metrics_port}{path}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value, read back by prometheus_client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _infer(client, n: int, model: str = "lenet5") -> None:
    for _ in range(n):
        image = grpcclient.InferInput("image", list(IMAGE.shape), "FP32")
        image.set_data_from_numpy(IMAGE)
        client.infer(model, [image])


LENET = (("model", "lenet5"), ("version", "1"))


def _at(**labels: str) -> tuple:
    """lenet5 version 1's labels and `labels`, as `_samples` keys them."""
    return tuple(sorted((*LENET, *labels.items())))


def test_scrape_has_triton_s_counters_histograms_and_gauges(repo):
    server = _server(repo)
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            _infer(client, 5)
            bad = grpcclient.InferInput("image", [1, 1, 8, 8], "FP32")
            bad.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
            with pytest.raises(InferenceServerException):
                client.infer("lenet5", [bad])
        text = _scrape(server)
    finally:
        server.stop()
    got = _samples(text)
    assert got["nv_inference_request_success", LENET] == 5
    assert got["nv_inference_request_failure", LENET] == 1
    assert got["nv_inference_count", LENET] == 5 and got["nv_inference_exec_count", LENET] == 5
    for name in ("request", "queue", "compute_input", "compute_infer", "compute_output"):
        assert got[f"nv_inference_{name}_duration_us", LENET] > 0, name
    # Triton's names exactly (untyped: prometheus_client would add _total to a counter)
    assert '\nnv_inference_request_success{model="lenet5",version="1"} 5.0\n' in text
    assert "# TYPE nv_inference_count untyped" in text
    assert got["netc_request_duration_seconds_count", LENET] == 5
    assert got["netc_queue_duration_seconds_count", LENET] == 5
    assert got["netc_compute_duration_seconds_count", LENET] == 5  # one per model run
    assert got["netc_batch_size_bucket", _at(le="1.0")] == 5
    assert 0 < got["netc_request_duration_seconds_sum", LENET] < 5
    buckets = [le for (name, labels), _ in got.items() if name.endswith("duration_seconds_bucket")
               for key, le in labels if key == "le"]  # fmt: skip
    assert {"5e-05", "0.001", "10.0", "+Inf"} <= set(buckets)
    assert got["netc_request_failures_total", _at(code="INVALID_ARGUMENT")] == 1
    assert got["nv_inference_pending_request_count", LENET] == 0
    assert got["netc_requests_in_flight", LENET] == 0
    assert got["nv_model_ready", LENET] == 1
    assert got["process_resident_memory_bytes", ()] > 0


def test_statistics_counts_are_equal_after_n_requests(repo):
    """perf_analyzer refuses a server whose compute_input, compute_infer and compute_output
    counts differ: after N requests (ModelInfer, and a stream) every per-request count
    is N, as Triton's are."""
    server = _server(repo)
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            _infer(client, 6)
            answers: list = []
            client.start_stream(lambda result, error: answers.append((result, error)))
            for i in range(4):
                image = grpcclient.InferInput("image", list(IMAGE.shape), "FP32")
                image.set_data_from_numpy(IMAGE)
                client.async_stream_infer("lenet5", [image], request_id=str(i))
            client.stop_stream()
            assert len(answers) == 4 and all(error is None for _, error in answers)
            stats = client.get_inference_statistics("lenet5").model_stats[0]
    finally:
        server.stop()
    inference = stats.inference_stats
    counts = {
        name: getattr(inference, name).count
        for name in ("success", "queue", "compute_input", "compute_infer", "compute_output")
    }
    assert counts == dict.fromkeys(counts, 10)
    assert inference.fail.count == 0 and stats.execution_count == stats.inference_count == 10
    assert all(getattr(inference, name).ns > 0 for name in counts)


def test_each_server_has_its_own_registry(repo):
    first, second = _server(repo), _server(repo)
    try:
        with grpcclient.InferenceServerClient(first.address) as client:
            _infer(client, 3)
        one, other = _samples(_scrape(first)), _samples(_scrape(second))
    finally:
        first.stop()
        second.stop()
    assert one["nv_inference_request_success", LENET] == 3
    assert other["nv_inference_request_success", LENET] == 0


def test_failures_are_counted_by_status_whoever_refuses(repo):
    """A model that refuses requests (here: being unloaded) counts each as a failure of
    that version with its status: a gRPC client's (recorded by the service) and a direct
    caller's (recorded by the batcher)."""
    server = _server(repo)
    try:
        model = server.running.repository.get("lenet5")
        model.batcher.closing = True
        with grpcclient.InferenceServerClient(server.address) as client:
            with pytest.raises(InferenceServerException, match="being unloaded"):
                _infer(client, 1)

        async def direct():
            try:
                await model.infer({"image": IMAGE})
            except Exception as exc:
                return type(exc).__name__

        assert server.call(direct()) == "ModelUnavailable"
        model.batcher.closing = False
        got = _samples(_scrape(server))
    finally:
        server.stop()
    assert got["netc_request_failures_total", _at(code="UNAVAILABLE")] == 2
    assert got["nv_inference_request_failure", LENET] == 2
    assert got["netc_requests_in_flight", LENET] == 0


def test_histogram_buckets_count_at_or_below_each_bound():
    histogram = Histogram((10, 20))
    for value in (5, 10, 11, 20, 21):
        histogram.observe(value)
    assert histogram.cumulative() == [2, 4, 5] and histogram.total == 67
    assert DURATION_BOUNDS_NS[0] == 50_000 and DURATION_BOUNDS_NS[-1] == 10**10  # 0.05 ms-10 s


# The HTTP side


def _start(tmp_path, **limits):
    return start_metrics_server(ModelRepository(tmp_path), "127.0.0.1", 0, **limits)


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_metrics_are_served_and_other_paths_are_not_found(tmp_path):
    server = _start(tmp_path)
    try:
        answer = _raw(server.port, b"GET /metrics?name=x HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer.split(b"\r\n")[0].endswith(b"200 OK")
        assert b"# TYPE nv_inference_count untyped" in answer
        assert b" 404 " in _raw(server.port, b"GET / HTTP/1.1\r\n\r\n").split(b"\r\n")[0]
    finally:
        server.close()


def test_oversized_requests_get_431_not_a_dropped_connection(tmp_path):
    server = _start(tmp_path)
    try:
        long_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
        assert b" 431 " in _raw(server.port, long_line).split(b"\r\n")[0]
        endless = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"
        assert b" 431 " in _raw(server.port, endless).split(b"\r\n")[0]
    finally:
        server.close()


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server ends the connection within `seconds` (EOF or reset)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_slow_clients_cannot_hold_the_port(tmp_path):
    """At most `max_connections` at once (one more is closed at accept); each gets
    `deadline_s` for its whole request, so a client that sends nothing, or a byte at a
    time, is cut off, and a scrape gets through once they are."""
    server = _start(tmp_path, max_connections=3, deadline_s=0.5)
    threads_before = threading.active_count()
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2)]
        slow = socket.create_connection(("127.0.0.1", server.port))
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")
        time.sleep(0.1)
        assert threading.active_count() <= threads_before + 3
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert _closed_within(extra, 0.3)  # over the limit: closed at once
        cut_off = False
        for _ in range(20):  # a header byte every 0.1 s would last 2 s
            try:
                slow.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            time.sleep(0.1)
        assert cut_off or _closed_within(slow, 0.5)
        assert all(_closed_within(sock, 1.0) for sock in idle)
        answer = _raw(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.split(b"\r\n")[0].endswith(b"200 OK")
        for sock in [*idle, slow, extra]:
            sock.close()
    finally:
        server.close()


def test_idle_clients_under_the_limit_do_not_delay_a_scrape(tmp_path):
    server = _start(tmp_path, deadline_s=30)
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
        started = time.monotonic()
        answer = _raw(server.port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert answer.split(b"\r\n")[0].endswith(b"200 OK")
        assert time.monotonic() - started < 2
        for sock in idle:
            sock.close()
    finally:
        server.close()


def test_metrics_over_tls_and_a_silent_client_does_not_stall_the_handshakes(tmp_path):
    pytest.importorskip("cryptography")
    import ssl

    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = _start(tmp_path, ssl_context=context, deadline_s=5)
    try:
        silent = socket.create_connection(("127.0.0.1", server.port))  # never says hello
        client = ssl.create_default_context(cafile=str(cert))
        url = f"https://localhost:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=3, context=client) as answer:
            assert b"nv_inference_count" in answer.read()
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to TLS
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=3).read()
        silent.close()
    finally:
        server.close()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "metrics.crt", folder / "metrics.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# Log lines


def test_event_lines_are_key_value_pairs():
    line = events.format_event(
        "failure", model="digits", version=None, action="reload", reason='no "model.onnx" here'
    )
    assert line == 'event=failure model=digits action=reload reason="no \\"model.onnx\\" here"'
    assert (
        events.format_event("load", model="d", seconds=0.1234) == "event=load model=d seconds=0.123"
    )


def test_loads_unloads_and_requests_are_logged(repo, caplog):
    with caplog.at_level(logging.DEBUG, logger="netc.serving"):
        server = _server(repo)
        try:
            with grpcclient.InferenceServerClient(server.address) as client:
                _infer(client, 2)
                client.unload_model("lenet5")
        finally:
            server.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=")]
    loads = [line for line in lines if line.startswith("event=load model=lenet5 version=1 ")]
    assert len(loads) == 1 and "seconds=" in loads[0]
    assert "event=unload model=lenet5" in lines
    requests = [line for line in lines if line.startswith("event=request model=lenet5")]
    assert len(requests) == 2 and all(" code=OK ms=" in line for line in requests)
    levels = {r.getMessage().split()[0]: r.levelname for r in caplog.records}
    assert levels["event=load"] == "INFO" and levels["event=request"] == "DEBUG"


# Triton's own load generator, where it is installed (not a test dependency)


def _perf_analyzer() -> tuple[str, dict[str, str]]:
    venv_bin = str(Path(sys.executable).parent)
    binary = shutil.which("perf_analyzer") or shutil.which("perf_analyzer", path=venv_bin)
    if binary is None:
        pytest.skip("perf_analyzer is not installed (the tritonclient wheel carries it)")
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime

        lib = Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    except ImportError:
        pass
    probe = subprocess.run([binary, "--version"], capture_output=True, text=True, env=env)
    if "error while loading shared libraries" in probe.stderr:
        pytest.skip(f"perf_analyzer cannot start here: {probe.stderr.strip()}")
    return binary, env


def test_perf_analyzer_runs_against_the_server(repo):
    binary, env = _perf_analyzer()
    server = _server(repo)
    try:
        result = subprocess.run(
            [binary, "-m", "lenet5", "-i", "grpc", "-u", server.address,
             "--concurrency-range", "1:2", "--measurement-interval", "300",
             "--stability-percentage", "1000", "--max-trials", "3"],  # any 3 windows: stable
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compute counts must be the same" not in result.stdout + result.stderr
    assert "Concurrency: 2, throughput:" in result.stdout

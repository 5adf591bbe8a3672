"""Shutdown under load: `netc serve` answers every call it accepted, refuses new ones, exits 0.

A signal turns health NOT_SERVING at once; new inference calls are refused (UNAVAILABLE)
while the queue drains; calls in flight and queued finish within --grace-period."""

import re
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import slow_model

from netc.protos.generated import grpc_service_pb2 as pb

CLIENTS = 10  # at about 150 ms a request, over a second of work queued at any moment


@pytest.fixture
def slow_repository(tmp_path):
    """REPO/slow: about 150 ms a request, one at a time (no batching): the clients keep a
    queue of them longer than the one second netc once waited at shutdown."""
    folder = tmp_path / "repo" / "slow"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(slow_model(400))
    (folder / "config.yaml").write_text("max_batch_size: 0\n")
    return tmp_path / "repo"


def _request() -> bytes:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16, 96, 96])
    request.raw_input_contents.append(np.ones((1, 16, 96, 96), np.float32).tobytes())
    return request.SerializeToString()


def _start(repository, *flags):
    process = subprocess.Popen(
        [sys.executable, "-m", "netc", "serve", "--repository", str(repository), "--host",
         "127.0.0.1", "--port", "0", "--no-metrics", "--no-http", *flags],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines = []
    for line in process.stderr:
        lines.append(line)
        if match := re.search(r"netc serving gRPC on ([\d.]+:\d+)", line):
            return process, match.group(1)
    process.kill()
    raise AssertionError("netc serve did not start:\n" + "".join(lines))


def _health(address):
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


def _client(address, data, signalled, calls):
    """Call until a call is refused after the signal; note each call's start and outcome."""
    with grpc.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        while True:
            start = time.monotonic()
            try:
                infer(data, timeout=60)
                calls.append((start, "OK", ""))
            except grpc.RpcError as error:
                calls.append((start, error.code().name, error.details() or ""))
                if signalled.is_set():
                    return


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_under_load_fails_no_accepted_request(slow_repository, how, grace=()):
    process, address = _start(slow_repository, *grace)
    try:
        data, signalled, calls = _request(), threading.Event(), []
        clients = [
            threading.Thread(target=_client, args=(address, data, signalled, calls))
            for _ in range(CLIENTS)
        ]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while sum(outcome == "OK" for _, outcome, _ in calls) < CLIENTS // 2:  # all queued
            assert time.monotonic() < deadline, calls[-3:]
            time.sleep(0.05)
        signalled_at = time.monotonic()
        process.send_signal(how)
        signalled.set()
        health = _health(address)  # while the queue drains, the port still answers
        for client in clients:
            client.join(timeout=120)
        assert process.wait(timeout=60) == 0
        rest = process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
    failed = [(s, o, d) for s, o, d in calls if o != "OK"]
    # what failed is what arrived after the signal, refused; nothing cancelled or dropped
    assert {outcome for _, outcome, _ in failed} <= {"UNAVAILABLE"}, [
        (start - signalled_at, o, d) for start, o, d in failed if o != "UNAVAILABLE"
    ]
    assert not [d for _, _, d in failed if re.search(r"[Cc]ancel|unloaded", d)], failed
    assert all(start > signalled_at - 0.5 for start, _, _ in failed), (signalled_at, failed)
    assert health == health_pb2.HealthCheckResponse.NOT_SERVING
    assert any("the server is shutting down" in d for _, _, d in failed), failed
    finished = [s for s, outcome, _ in calls if outcome == "OK" and s < signalled_at]
    assert len(finished) >= CLIENTS // 2
    assert "Traceback" not in rest


def test_a_grace_period_that_runs_out_cancels_what_is_left_and_exits_0(slow_repository):
    """--grace-period bounds the wait: calls still queued then are cancelled, and the
    process exits 0 all the same."""
    process, address = _start(slow_repository, "--grace-period", "0.2")
    try:
        data = _request()
        with grpc.insecure_channel(address) as channel:
            infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            pending = [infer.future(data, timeout=60) for _ in range(30)]  # ~4.5 s of work
            deadline = time.monotonic() + 60
            while not any(call.done() for call in pending):  # one answered: the rest queue
                assert time.monotonic() < deadline
                time.sleep(0.01)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            elapsed = time.monotonic() - started
            codes = [call.exception().code() if call.exception() else None for call in pending]
    finally:
        if process.poll() is None:
            process.kill()
    assert None in codes and grpc.StatusCode.UNAVAILABLE in codes  # some done, the rest cut
    assert elapsed < 20  # not the queue's seconds of work, nor the 30 s default

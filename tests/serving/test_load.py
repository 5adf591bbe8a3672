"""Load and fault scenarios on loopback, bounded in count and time: overload, and versions
dropped into and removed from the repository while clients send."""

import shutil
import statistics
import threading
import time

import grpc
import numpy as np
import pytest
from helpers import slow_model

from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.server import BackgroundServer, ServerOptions

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _caller(address):
    channel = grpc.insecure_channel(address)
    call = channel.unary_unary(
        INFER, request_serializer=None, response_deserializer=pb.ModelInferResponse.FromString
    )
    return channel, call


def _send_until(address, data, stop, outcomes):
    """One client: send `data` back to back until `stop`; note (code, seconds, answer)."""
    channel, call = _caller(address)
    with channel:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                answer = call(data, timeout=30)
                outcomes.append(("OK", time.perf_counter() - start, answer))
            except grpc.RpcError as error:
                outcomes.append((error.code().name, time.perf_counter() - start, error.details()))


def _load(address, data, clients, seconds, during=None):
    """`clients` threads sending for `seconds` (and while `during()` runs, if given)."""
    stop, outcomes = threading.Event(), []
    threads = [
        threading.Thread(target=_send_until, args=(address, data, stop, outcomes))
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(seconds)
        if during is not None:
            during()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    return outcomes


# Overload: the excess is refused at once and cheaply; what is accepted is served.


def _slow_repo(root, pace: str = ""):
    """REPO/slow: about 10 ms a request, one at a time, at most 4 waiting."""
    folder = root / "repo" / "slow"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.onnx").write_bytes(slow_model(30))
    (folder / "config.yaml").write_text(
        f"max_batch_size: 0\ndynamic_batching: {{max_queue_size: 4{pace}}}\n"
    )
    return root / "repo"


@pytest.fixture
def small_queue(tmp_path):
    """The slow model, its refusals answered at once (refusals_per_second: 0)."""
    _slow_repo(tmp_path, ", refusals_per_second: 0")
    server = BackgroundServer(
        tmp_path / "repo", ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    yield server
    server.stop()


def _slow_request() -> bytes:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16, 96, 96])
    request.raw_input_contents.append(np.ones((1, 16, 96, 96), np.float32).tobytes())
    return request.SerializeToString()


def test_overload_is_refused_quickly_and_the_server_recovers(small_queue):
    data = _slow_request()
    outcomes = _load(small_queue.address, data, clients=16, seconds=2.0)
    codes = {code for code, _, _ in outcomes}
    assert codes == {"OK", "RESOURCE_EXHAUSTED"}, codes
    served = [seconds for code, seconds, _ in outcomes if code == "OK"]
    refused = [seconds for code, seconds, _ in outcomes if code != "OK"]
    assert all(answer.outputs[0].shape == [1, 16] for code, _, answer in outcomes if code == "OK")
    # a refusal costs no model time: far quicker than an answer, which waited in the queue
    assert statistics.median(refused) < statistics.median(served) / 2, (
        statistics.median(refused),
        statistics.median(served),
    )
    # an accepted request waited for at most the queue ahead of it, not for the storm
    assert max(served) < 10
    assert len(served) >= 20
    # the storm over, the server answers at once again
    channel, call = _caller(small_queue.address)
    with channel:
        start = time.perf_counter()
        assert call(data, timeout=30).outputs[0].shape == [1, 16]
        assert time.perf_counter() - start < 10
    stats = small_queue.running.repository.get("slow").stats
    assert stats.success.count >= len(served) + 1


def test_a_storm_of_refusals_is_paced_and_the_model_keeps_serving(tmp_path):
    """16 clients retrying at once on a 4-deep queue, refusals paced at 20 a second: the
    refusals that go out stay near that pace (each costs the model's cores a request's
    bytes), the accepted requests are served, and the storm over, a request is answered."""
    repo = _slow_repo(tmp_path, ", refusals_per_second: 20")
    server = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    try:
        data = _slow_request()
        start = time.perf_counter()
        outcomes = _load(server.address, data, clients=16, seconds=2.0)
        elapsed = time.perf_counter() - start
        refused = [seconds for code, seconds, _ in outcomes if code == "RESOURCE_EXHAUSTED"]
        served = [seconds for code, seconds, _ in outcomes if code == "OK"]
        assert {code for code, _, _ in outcomes} <= {"OK", "RESOURCE_EXHAUSTED"}
        assert len(served) >= 20 and max(served) < 10
        # 20 a second, plus the first of each burst: unpaced, this storm makes hundreds
        assert len(refused) <= 20 * elapsed + 16, (len(refused), elapsed)
        channel, call = _caller(server.address)
        with channel:
            assert call(data, timeout=30).outputs[0].shape == [1, 16]
    finally:
        server.stop()


# Reload under load: versions come and go, every answer comes from a complete model.


def test_versions_dropped_in_and_removed_under_load_fail_no_request(repository, tmp_path):
    """8 clients send continuously while --poll sees a new version dropped in three
    times (each renamed into place, as `netc export --repository` does) and one removed:
    no request fails, every answer is a whole model's (10 finite scores)."""
    root = tmp_path / "repo"
    model = (repository / "lenet5" / "1" / "model.onnx").read_bytes()
    (root / "digits" / "1").mkdir(parents=True)
    (root / "digits" / "1" / "model.onnx").write_bytes(model)
    server = BackgroundServer(
        root, ServerOptions(host="127.0.0.1", port=0, metrics_port=None, poll_seconds=0.1)
    )
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 32, 32])
    request.raw_input_contents.append(np.ones((1, 1, 32, 32), np.float32).tobytes())
    versions_seen = []

    def drop(version):
        folder = root / "digits" / str(version)
        folder.mkdir()
        (folder / ".model.onnx.tmp").write_bytes(model)
        (folder / ".model.onnx.tmp").rename(folder / "model.onnx")

    def served_version():
        return server.running.repository.get("digits").version

    def until(condition, seconds=30.0):
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, "the poll did not pick the change up"
            time.sleep(0.05)

    def changes():
        for version in (2, 3, 4):
            drop(version)
            until(lambda v=str(version): served_version() == v)
            versions_seen.append(served_version())
            time.sleep(0.3)
        shutil.rmtree(root / "digits" / "4")
        until(lambda: served_version() == "3")
        versions_seen.append(served_version())
        time.sleep(0.3)

    try:
        outcomes = _load(server.address, request.SerializeToString(), 8, 0.3, during=changes)
    finally:
        server.stop()
    assert versions_seen == ["2", "3", "4", "3"]
    failed = [(code, detail) for code, _, detail in outcomes if code != "OK"]
    assert failed == []
    answered = {answer.model_version for _, _, answer in outcomes}
    assert answered >= {"1", "2", "3", "4"} - {"1"} and answered <= {"1", "2", "3", "4"}
    for _, _, answer in outcomes:
        (scores,) = answer.raw_output_contents
        values = np.frombuffer(scores, np.float32)
        assert values.shape == (10,) and np.isfinite(values).all()

"""Soak: `netc serve` under the load and fault scenarios of issue 11, for N minutes.

One `netc serve --poll` process on loopback serves three models: digits (lenet5),
slow (a chain of convolutions, ~10 ms a request, one at a time, at most 4 queued)
and spare (digits again, loaded and unloaded over and over). Rounds of scenarios
run until the time is up, each with its own client threads sending back to back:

  steady    8 clients on digits
  peak      2 clients on slow: its answers a second without refusals
  overload  16 clients on slow: the excess is refused (RESOURCE_EXHAUSTED); its
            answers a second are printed against peak's
  reload    8 clients on digits while a new version is renamed into its folder
            and the oldest removed (the poll swaps them)
  cycles    4 clients on digits while spare is loaded and unloaded 10 times
            (RepositoryModelLoad/Unload)

then SIGTERM with 8 clients on slow: calls in flight finish, new ones are
refused, the process must exit 0. Printed: requests sent, succeeded, rejected
(RESOURCE_EXHAUSTED, and UNAVAILABLE refusals after the SIGTERM) and failed
(anything else: must be 0), and the server's resident memory and threads after
the first round and before the SIGTERM.

    .venv/bin/python bench/soak.py [--minutes 2]
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from netc.protos.generated import grpc_service_pb2 as pb

PY = sys.executable
INFER = "/inference.GRPCInferenceService/ModelInfer"
SERVICE = "/inference.GRPCInferenceService/"


def slow_model(convs: int, size: int = 96, channels: int = 16) -> bytes:
    """`convs` 3x3 convolutions on x [batch, channels, size, size], then each channel's
    mean (tests/helpers.py has the same model for the tests)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((channels, channels, 3, 3)) * 0.05
    nodes, name = [], "x"
    for i in range(convs):
        nodes.append(helper.make_node("Conv", [name, "w"], [f"c{i}"], pads=[1, 1, 1, 1]))
        name = f"c{i}"
    nodes.append(helper.make_node("ReduceMean", [name], ["y"], axes=[2, 3], keepdims=0))
    shape = ["batch", channels, size, size]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels])],
        initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    opsets = [helper.make_opsetid("", 13)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


def make_repository(root: Path) -> bytes:
    """digits (exported by netc), slow and spare; returns digits' model file."""
    subprocess.run(
        [PY, "-m", "netc", "export", "lenet5", "--repository", str(root), "--name", "digits",
         "--no-verify"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    model = (root / "digits" / "1" / "model.onnx").read_bytes()
    (root / "spare" / "1").mkdir(parents=True)
    (root / "spare" / "1" / "model.onnx").write_bytes(model)
    (root / "slow" / "1").mkdir(parents=True)
    (root / "slow" / "1" / "model.onnx").write_bytes(slow_model(30))
    (root / "slow" / "config.yaml").write_text(
        "max_batch_size: 0\ndynamic_batching: {max_queue_size: 4}\n"
    )
    return model


def request(model: str, name: str, shape: list[int]) -> bytes:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype="FP32", shape=shape)
    message.raw_input_contents.append(np.ones(shape, np.float32).tobytes())
    return message.SerializeToString()


class Tally:
    """Outcomes of every call, by status; UNAVAILABLE after the SIGTERM counts as refused."""

    def __init__(self) -> None:
        self.codes: Counter[str] = Counter()
        self.failures: list[str] = []
        self.signalled_at: float | None = None
        self.lock = threading.Lock()

    def note(self, code: str, started: float, detail: str = "") -> None:
        with self.lock:
            if code == "UNAVAILABLE" and self.signalled_at and started > self.signalled_at - 0.5:
                code = "REFUSED_AT_SHUTDOWN"
            self.codes[code] += 1
            if code not in ("OK", "RESOURCE_EXHAUSTED", "REFUSED_AT_SHUTDOWN"):
                when = (
                    ""
                    if self.signalled_at is None
                    else f" ({started - self.signalled_at:+.2f} s from the SIGTERM)"
                )
                self.failures.append(f"{code}{when}: {detail}"[:300])


def clients(address: str, data: bytes, count: int, tally: Tally, stop: threading.Event):
    def send() -> None:
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(INFER)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    call(data, timeout=60)
                    tally.note("OK", started)
                except grpc.RpcError as error:
                    tally.note(error.code().name, started, error.details() or "")
                    if tally.signalled_at is not None:
                        return

    threads = [threading.Thread(target=send, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def under_load(address, data, count, tally, work) -> None:
    """Run `work()` while `count` clients send `data`."""
    stop = threading.Event()
    threads = clients(address, data, count, tally, stop)
    try:
        work()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)


def process_figures(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and thread count of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return rss, int(re.search(r"Threads:\s+(\d+)", status).group(1))


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not pick a change up in time")
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="netc-soak-"))
    try:
        return soak(root, args.minutes * 60)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def soak(root: Path, seconds: float) -> int:
    model = make_repository(root)
    server = subprocess.Popen(
        [PY, "-m", "netc", "serve", "--repository", str(root), "--host", "127.0.0.1",
         "--port", "0", "--no-metrics", "--no-http", "--poll", "0.2"],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    address = ""
    for line in server.stderr:
        if match := re.search(r"netc serving gRPC on ([\d.]+:\d+)", line):
            address = match.group(1)
            break
    if not address:
        sys.exit("netc serve did not start")
    threading.Thread(target=server.stderr.read, daemon=True).start()  # keep the pipe drained
    channel = grpc.insecure_channel(address)
    load = channel.unary_unary(
        SERVICE + "RepositoryModelLoad", pb.RepositoryModelLoadRequest.SerializeToString
    )
    unload = channel.unary_unary(
        SERVICE + "RepositoryModelUnload", pb.RepositoryModelUnloadRequest.SerializeToString
    )
    index = channel.unary_unary(
        SERVICE + "RepositoryIndex",
        pb.RepositoryIndexRequest.SerializeToString,
        pb.RepositoryIndexResponse.FromString,
    )

    def serving(name: str) -> set[str]:
        answer = index(pb.RepositoryIndexRequest(ready=True))
        return {m.version for m in answer.models if m.name == name}

    digits = request("digits", "image", [1, 1, 32, 32])
    slow = request("slow", "x", [1, 16, 96, 96])
    tally, version = Tally(), 1

    def reload() -> None:
        nonlocal version
        version += 1
        folder = root / "digits" / str(version)
        folder.mkdir()
        (folder / ".model.onnx.tmp").write_bytes(model)
        (folder / ".model.onnx.tmp").rename(folder / "model.onnx")
        wait_for(lambda: serving("digits") == {str(version)})
        oldest = min(int(p.name) for p in (root / "digits").iterdir() if p.name.isdigit())
        if oldest < version:
            shutil.rmtree(root / "digits" / str(oldest))
        time.sleep(2)

    def cycles() -> None:
        for _ in range(10):
            load(pb.RepositoryModelLoadRequest(model_name="spare"), timeout=60)
            unload(pb.RepositoryModelUnloadRequest(model_name="spare"), timeout=60)

    scenarios = [
        ("steady", lambda: under_load(address, digits, 8, tally, lambda: time.sleep(5))),
        ("peak", lambda: under_load(address, slow, 2, tally, lambda: time.sleep(5))),
        ("overload", lambda: under_load(address, slow, 16, tally, lambda: time.sleep(5))),
        ("reload", lambda: under_load(address, digits, 8, tally, reload)),
        ("cycles", lambda: under_load(address, digits, 4, tally, cycles)),
    ]
    started = time.monotonic()
    rounds, before = 0, None
    rates: dict[str, list[float]] = {"peak": [], "overload": []}  # slow's answers a second
    while time.monotonic() - started < seconds:
        for name, run in scenarios:
            answered, began = tally.codes["OK"], time.monotonic()
            run()
            if name in rates:
                rates[name].append((tally.codes["OK"] - answered) / (time.monotonic() - began))
        rounds += 1
        if before is None:
            before = process_figures(server.pid)
    after = process_figures(server.pid)

    stop = threading.Event()
    threads = clients(address, slow, 8, tally, stop)
    time.sleep(1)
    tally.signalled_at = time.monotonic()
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=120)
    stop.set()
    for thread in threads:
        thread.join(timeout=120)
    channel.close()

    sent = sum(tally.codes.values())
    rejected = tally.codes["RESOURCE_EXHAUSTED"] + tally.codes["REFUSED_AT_SHUTDOWN"]
    failed = sent - tally.codes["OK"] - rejected
    minutes = (time.monotonic() - started) / 60
    print(f"soak: {minutes:.1f} min, {rounds} rounds of {', '.join(n for n, _ in scenarios)}")
    shutdown = tally.codes["REFUSED_AT_SHUTDOWN"]
    print(
        f"requests sent {sent:,}, succeeded {tally.codes['OK']:,}, rejected {rejected:,} "
        f"({tally.codes['RESOURCE_EXHAUSTED']:,} RESOURCE_EXHAUSTED, {shutdown:,} refused "
        f"after SIGTERM), failed {failed:,}"
    )
    print(
        f"digits versions swapped in: {version - 1}; spare loaded and unloaded {10 * rounds} times"
    )
    print(f"server resident memory {before[0]:.0f} MiB after the first round, {after[0]:.0f} MiB "
          f"at the end ({(after[0] / before[0] - 1) * 100:+.1f} %); threads {before[1]} -> "
          f"{after[1]}; exit status after SIGTERM {code}")  # fmt: skip
    peak, storm = statistics.median(rates["peak"]), statistics.median(rates["overload"])
    print(
        f"slow model answers: {peak:.1f}/s with 2 clients, {storm:.1f}/s with 16 clients and "
        f"refusals ({storm / peak * 100:.0f} % of the unloaded rate)"
    )
    for failure in tally.failures[:10]:
        print("  failed:", failure)
    return 0 if failed == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

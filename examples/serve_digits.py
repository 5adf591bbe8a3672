"""The end of `make demo`: serve the trained digits model and classify its held-out digits.

    python examples/serve_digits.py RUN_DIR REPO

Exports RUN_DIR's best checkpoint into the model repository REPO, starts
`netc serve` on a free loopback port, waits until it reports SERVING, sends
every validation image (the run's own held-out split) as a PNG through the
vision service, prints accuracy and latency, and shuts the server down.
"""

from __future__ import annotations

import io
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from netc.runtime import checkpoint
from netc.runtime.datasets import load_dataset, split
from netc.serving.client import VisionClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(address: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"netc serve exited with status {process.returncode}")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit("netc serve did not become ready")


def held_out(run_dir: Path):
    """The run's validation split: same data, same seed, same fraction as training."""
    config = checkpoint.load(run_dir)["config"]
    _, val = split(load_dataset("digits"), config["val_fraction"], config["seed"])
    return val


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def main(run_dir: Path, repository: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "netc",
            "export",
            str(run_dir),
            "--repository",
            str(repository),
            "--name",
            "digits",
        ],
        check=True,
    )
    val = held_out(run_dir)
    images = [png(x) for x in val.images.numpy()]
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "netc",
            "serve",
            "--repository",
            str(repository),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-metrics",
            "--no-http",
        ]
    )
    try:
        wait_until_serving(address, server)
        latencies, correct = [], 0
        with VisionClient(address) as client:
            for image, label in zip(images, val.targets.tolist()):
                start = time.perf_counter()
                (result,) = client.classify([image], "digits", top_k=1)
                latencies.append((time.perf_counter() - start) * 1e3)
                correct += int(result[0][1] == label)
        latencies.sort()
        print(
            f"\nserved digits: {correct}/{len(images)} held-out images correct "
            f"({correct / len(images):.2%}) through gRPC at {address}; latency p50 "
            f"{statistics.median(latencies):.2f} ms, p99 "
            f"{latencies[int(len(latencies) * 0.99) - 1]:.2f} ms per PNG"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("server stopped")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""Serving throughput and latency against their floors, on loopback, in one run.

Targets measured side by side, each driven by the same load generator (a
separate process: grpc.aio client, C concurrent callers, a bounded number of
requests, the request serialized once):
  echo-aio     a bare grpc.aio server returning a response of the same size
               (the floor for any Python gRPC server on this machine)
  echo-wait    the aio echo, its handler first busy for in-process onnxruntime's
               p50 (concurrency 1 only): the floor for a handler that takes as
               long as the model
  echo-model   the aio echo, its handler first running the model in-process on a
               fixed input (concurrency 1 only): the floor for any server that
               runs the model, with what the run does to caches and cores
  echo-threads the same echo on grpc's thread-pool server (aio vs threads)
  ort          in-process onnxruntime, no gRPC (batch 1; and the best
               throughput over batch sizes, for concurrency 16), with
               onnxruntime's default options (the issue's baseline) and with
               the options `netc serve` uses (`serving.model.session_options`;
               a model that runs in under 1 ms is then made single-threaded)
  netc         `netc serve` over Triton's ModelInfer, dynamic batching on
  netc-nobatch `netc serve` with dynamic batching off
  netc-on-threads  netc's ModelInfer handler code on grpc's thread-pool server
               (leader/follower batching): aio vs threads for the real work
  http-echo    an aiohttp.web server answering a POST with a body of the size of
               netc's REST answer (the floor for any aiohttp server; driven, like
               netc-http, by an aiohttp client process)
  netc-http    `netc serve`'s REST port (serving/http/, the same server as `netc`):
               KServe v2 infer with Triton's binary tensor data in and out
for the digits classifier (lenet5, 1x32x32) and resnet18 (3x224x224), at
concurrency 1 and 16.

On a small shared machine one measurement of a few hundred milliseconds
swings by 2x, so every target is measured `--repeats` times in interleaved
rounds (drift hits all targets alike) and the table shows the medians.

    .venv/bin/python bench/serve.py [--requests 5000] [--resnet-requests 200] [--repeats 3]
                                    [--models digits,resnet18] [--only TARGET,...]

`--int8` instead serves resnet18 twice from one `netc serve`: fp32 (the
export after `netc optimize`) and int8 (the same, quantized by netc's int8
path, calibrated on 16 random inputs: random weights have no data set), and
measures netc and in-process onnxruntime (the server's options) for both at
concurrency 1 and 16, interleaved round by round:

    .venv/bin/python bench/serve.py --int8 [--resnet-requests 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import onnxruntime as ort

PY = sys.executable
ECHO = "/netc.bench.Echo/Call"
ECHO_WAIT = "/netc.bench.Echo/Wait"
ECHO_MODEL = "/netc.bench.Echo/Model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- servers -----------------------------------------------------------------------


def echo_server(
    port: int, response_size: int, threads: bool, wait_s: float = 0.0, model: str = ""
) -> None:
    """`Call` answers at once; `Wait` (aio only) first keeps the handler busy for `wait_s`,
    as long as the model takes: the floor at concurrency 1 for any server whose handler
    takes that long (on this VM an 11 ms handler alone adds ~0.7 ms to the echo's round
    trip, before any serving code runs). `Model` (aio only) first runs `model` with
    onnxruntime's defaults on a fixed input, on the event loop: the floor for any
    server that runs the model, with what the run does to caches and cores."""
    import grpc

    reply = b"x" * response_size
    handler = grpc.method_handlers_generic_handler(
        "netc.bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(lambda request, context: reply)},
    )
    options = [
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    if threads:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        server.wait_for_termination()
        return

    async def handle(request, context):
        return reply

    async def wait(request, context):
        until = time.perf_counter() + wait_s
        while time.perf_counter() < until:  # busy, as a model run keeps a core busy
            pass
        return reply

    session, fixed = None, {}
    if model:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        shape = [1, *spec.shape[1:]]
        fixed = {spec.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
        session.run(None, fixed)

    async def run_model(request, context):
        session.run(None, fixed)
        return reply

    async def run() -> None:
        server = grpc.aio.server(options=options)
        methods = {
            "Call": grpc.unary_unary_rpc_method_handler(handle),
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
            "Model": grpc.unary_unary_rpc_method_handler(run_model),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("netc.bench.Echo", methods),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(run())


def http_echo_server(port: int, response_size: int) -> None:
    """aiohttp.web answering every POST with `response_size` bytes, as netc's REST port
    answers (its JSON header's length in Inference-Header-Content-Length)."""
    from aiohttp import web

    reply = b"x" * response_size

    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(
            body=reply,
            content_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": "0"},
        )

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/{path:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def threads_server(port: int, model_path: str) -> None:
    """netc's ModelInfer work (its decoding, checks, model run and response code) on grpc's
    thread-pool server instead of grpc.aio: the aio-vs-threads question asked of the real
    handler, not only of an echo. Batching is leader/follower: the thread that finds the
    model idle runs everything queued (up to the model's max batch) for all waiting threads.
    """
    import threading

    import grpc

    from netc.protos.generated import grpc_service_pb2 as pb
    from netc.serving.config import ModelConfig
    from netc.serving.model import ServedModel
    from netc.serving.tensors import add_output, decode_inputs

    model = ServedModel("m", "1", Path(model_path), ModelConfig())
    model.warm_up()
    lock, queue, busy = threading.Lock(), [], [False]

    class Slot:
        def __init__(self, inputs):
            self.inputs, self.done, self.outputs = inputs, threading.Event(), None

    def run_queued() -> None:
        while True:
            with lock:
                if not queue:
                    busy[0] = False
                    return
                group = queue[: model.info.max_batch_size]
                del queue[: len(group)]
            names = group[0].inputs
            merged = {n: np.concatenate([slot.inputs[n] for slot in group]) for n in names}
            outputs = model._run(merged)
            for i, slot in enumerate(group):
                slot.outputs = {n: value[i : i + 1] for n, value in outputs.items()}
                slot.done.set()

    def infer(request_bytes: bytes, context) -> bytes:
        request = pb.ModelInferRequest.FromString(request_bytes)
        inputs = decode_inputs(request)
        model.check(inputs)
        slot = Slot(inputs)
        with lock:
            queue.append(slot)
            lead, busy[0] = not busy[0], True
        if lead:
            run_queued()
        slot.done.wait()
        response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        for name, value in slot.outputs.items():
            add_output(response, name, value)
        return response.SerializeToString()

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16),
        options=[
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ],
    )
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "inference.GRPCInferenceService",
                {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)},
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def start(args: list[str], port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    environ = {**os.environ, **(env or {})}
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environ)
    deadline = time.time() + 120
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return process
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode()[-2000:])
        time.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


def netc_ready(port: int) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            status = stub.Check(health_pb2.HealthCheckRequest()).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            time.sleep(0.1)
    raise RuntimeError("netc serve did not become ready")


# --- load generator (runs in its own process) ----------------------------------------


def load(port: int, method: str, payload_file: str, concurrency: int, requests: int) -> None:
    import grpc

    payload = Path(payload_file).read_bytes()

    async def run() -> list[float]:
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            call = channel.unary_unary(method)
            for _ in range(min(20, requests)):  # warm-up
                await call(payload)
            latencies: list[float] = []
            remaining = [requests]

            async def caller() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    begin = time.perf_counter()
                    await call(payload)
                    latencies.append(time.perf_counter() - begin)

            begin = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            latencies.append(-(time.perf_counter() - begin))  # last entry: wall time
            return latencies

    print(json.dumps(asyncio.run(run())))


def http_load(port: int, path: str, payload_file: str, concurrency: int, requests: int) -> None:
    """`load` over HTTP: POST the body (a binary-data infer request: its JSON header's
    length is the first line of the file) with aiohttp's client, keep-alive."""
    import aiohttp

    header_length, payload = Path(payload_file).read_bytes().split(b"\n", 1)
    headers = {
        "Inference-Header-Content-Length": header_length.decode(),
        "Content-Type": "application/octet-stream",
    }
    url = f"http://127.0.0.1:{port}{path}"

    async def run() -> list[float]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def call() -> None:
                async with session.post(url, data=payload, headers=headers) as answer:
                    await answer.read()
                    if answer.status != 200:
                        raise RuntimeError(f"{url}: {answer.status} {await answer.text()}")

            for _ in range(min(20, requests)):  # warm-up
                await call()
            latencies: list[float] = []
            remaining = [requests]

            async def caller() -> None:
                while remaining[0] > 0:
                    remaining[0] -= 1
                    begin = time.perf_counter()
                    await call()
                    latencies.append(time.perf_counter() - begin)

            begin = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(concurrency)))
            latencies.append(-(time.perf_counter() - begin))  # last entry: wall time
            return latencies

    print(json.dumps(asyncio.run(run())))


def drive(port: int, method: str, payload: bytes, concurrency: int, requests: int) -> dict:
    with tempfile.NamedTemporaryFile(delete=False) as handle:
        handle.write(payload)
    try:
        out = subprocess.run(
            [
                PY,
                __file__,
                "--http-load" if method.startswith("/v2/") else "--load",
                str(port),
                method,
                handle.name,
                str(concurrency),
                str(requests),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    values = json.loads(out)
    wall, latencies = -values[-1], sorted(values[:-1])
    return {
        "rps": len(latencies) / wall,
        "p50": latencies[len(latencies) // 2] * 1e3,
        "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


# --- in-process onnxruntime --------------------------------------------------------


def ort_numbers(path: Path, shape: tuple[int, ...], requests: int, serving: bool) -> dict:
    """Batch-1 latency and the best throughput over batch sizes; `serving`: netc's options."""
    if serving:
        from netc.serving.config import ModelConfig
        from netc.serving.model import session_options

        options = session_options(ModelConfig())
    else:
        options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(requests):
        begin = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - begin)
    times.sort()
    best = len(times) / sum(times)
    for batch in (4, 16):
        xb = np.repeat(x, batch, axis=0)
        begin = time.perf_counter()
        runs = max(3, requests // batch // 2)
        for _ in range(runs):
            session.run(None, {name: xb})
        best = max(best, runs * batch / (time.perf_counter() - begin))
    return {
        "p50": times[len(times) // 2] * 1e3,
        "p99": times[int(len(times) * 0.99) - 1] * 1e3,
        "rps_batch1": len(times) / sum(times),
        "rps_best": best,
    }


def infer_request(model: str, shape: tuple[int, ...]) -> bytes:
    from netc.protos.generated import grpc_service_pb2 as pb

    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add()
    tensor.name, tensor.datatype = "image", "FP32"
    tensor.shape.extend([1, *shape])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def http_infer_body(model: str, shape: tuple[int, ...]) -> bytes:
    """A KServe v2 infer request with Triton's binary data (the same input as
    `infer_request`), its outputs asked for binary; the first line is the JSON's length."""
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    data = x.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, *shape],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return str(len(header)).encode() + b"\n" + header + data


def http_response_size(port: int, model: str, body: bytes) -> int:
    import urllib.request

    header_length, payload = body.split(b"\n", 1)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=payload,
        headers={"Inference-Header-Content-Length": header_length.decode()},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return len(answer.read())


def response_size(port: int, request: bytes) -> int:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(request)
    return len(reply)


# --- the run -------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--resnet-requests", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per target")
    parser.add_argument(
        "--models", default="digits,resnet18", help="which of digits,resnet18 to measure"
    )
    parser.add_argument("--int8", action="store_true", help="resnet18 int8 beside fp32")
    parser.add_argument(
        "--only", help="measure these targets alone (e.g. netc,echo-aio,netc-http,http-echo)"
    )
    args = parser.parse_args()
    if args.int8:
        int8_main(args.resnet_requests, args.repeats)
        return
    root = Path(tempfile.mkdtemp(prefix="netc-bench-"))
    repos = {"batch": root / "batch", "nobatch": root / "nobatch"}
    models = {
        "digits": ("lenet5", (1, 32, 32), args.requests),
        "resnet18": ("resnet18", (3, 224, 224), args.resnet_requests),
    }
    models = {name: models[name] for name in args.models.split(",")}
    for name, (zoo_name, _, _) in models.items():
        for repo in repos.values():
            subprocess.run(
                [
                    PY,
                    "-m",
                    "netc",
                    "export",
                    zoo_name,
                    "--repository",
                    str(repo),
                    "--name",
                    name,
                    "--no-verify",
                ],
                check=True,
                capture_output=True,
            )
        (repos["nobatch"] / name / "config.yaml").write_text("dynamic_batching: false\n")
    rows = []
    servers = []
    try:
        ports = {key: free_port() for key in ("batch", "nobatch", "http")}
        for key, repo in repos.items():
            # the REST port on the batching server: netc-http and netc share one server
            http = ["--http-port", str(ports["http"])] if key == "batch" else ["--no-http"]
            servers.append(
                start(
                    [
                        PY,
                        "-m",
                        "netc",
                        "serve",
                        "--repository",
                        str(repo),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(ports[key]),
                        "--no-metrics",
                        *http,
                    ],
                    ports[key],
                )
            )
            netc_ready(ports[key])
        for name, (_, shape, requests) in models.items():
            rows += measure_model(
                name,
                shape,
                requests,
                args.repeats,
                repos["batch"] / name / "1" / "model.onnx",
                ports,
                args.only.split(",") if args.only else None,
            )
    finally:
        for process in servers:
            process.kill()
            process.wait()
    report(rows)


def int8_repository(root: Path) -> Path:
    """root/repo with resnet18 (fp32, optimized) and resnet18_int8 (that model, quantized)."""
    import onnx

    from netc.compiler.optimizer.api import optimize_model
    from netc.compiler.optimizer.quantize import quantize

    repo = root / "repo"
    export = [PY, "-m", "netc", "export", "resnet18", "--repository", str(repo)]
    subprocess.run([*export, "--name", "resnet18", "--no-verify"], check=True, capture_output=True)
    path = repo / "resnet18" / "1" / "model.onnx"
    fp32 = optimize_model(onnx.load(path), name="resnet18").model
    onnx.save(fp32, path)
    calibration = np.random.default_rng(0).random((16, 3, 224, 224), dtype=np.float32)
    (repo / "resnet18_int8" / "1").mkdir(parents=True)
    onnx.save(quantize(fp32, calibration)[0], repo / "resnet18_int8" / "1" / "model.onnx")
    return repo


def int8_main(requests: int, repeats: int) -> None:
    """resnet18 fp32 and int8, served and in process, c=1 and 16, interleaved; medians."""
    repo = int8_repository(Path(tempfile.mkdtemp(prefix="netc-bench-int8-")))
    names = ("resnet18", "resnet18_int8")
    port = free_port()
    serve = ["serve", "--repository", str(repo), "--host", "127.0.0.1", "--port", str(port)]
    server = start([PY, "-m", "netc", *serve, "--no-metrics", "--no-http"], port)
    infer = "/inference.GRPCInferenceService/ModelInfer"
    runs = {(name, c): [] for name in names for c in (1, 16)}
    ort_runs = {name: [] for name in names}
    try:
        netc_ready(port)
        for _ in range(repeats):
            for name in names:
                path = repo / name / "1" / "model.onnx"
                ort_runs[name].append(ort_numbers(path, (3, 224, 224), requests, serving=True))
            for c in (1, 16):
                for name in names:
                    request = infer_request(name, (3, 224, 224))
                    runs[(name, c)].append(drive(port, infer, request, c, requests))
    finally:
        server.kill()
        server.wait()
    print(f"{'model':<14} {'c':>2} {'target':<17} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    stats = {key: median_stats(value) for key, value in runs.items()}
    ort_stats = {name: median_stats(value) for name, value in ort_runs.items()}
    for c in (1, 16):
        for name in names:
            o, n = ort_stats[name], stats[(name, c)]
            ort_rps = o["rps_batch1" if c == 1 else "rps_best"]
            print(
                f"{name:<14} {c:>2} {'ort (serve opts)':<17} {ort_rps:>8.0f} "
                f"{o['p50']:>8.2f} {o['p99']:>8.2f}"
            )
            print(
                f"{name:<14} {c:>2} {'netc':<17} {n['rps']:>8.0f} {n['p50']:>8.2f} {n['p99']:>8.2f}"
            )
    print()
    for c in (1, 16):
        fp32, int8 = stats[("resnet18", c)], stats[("resnet18_int8", c)]
        each = [
            i["rps"] / f["rps"] for f, i in zip(runs[("resnet18", c)], runs[("resnet18_int8", c)])
        ]
        print(
            f"resnet18 c={c}: int8/fp32 served throughput {int8['rps'] / fp32['rps']:.2f}, "
            f"p50 {int8['p50'] / fp32['p50']:.2f} [round by round: "
            f"{', '.join(f'{r:.2f}' for r in each)}]"
        )
    o32, o8 = ort_stats["resnet18"], ort_stats["resnet18_int8"]
    print(
        f"in-process (serve opts): int8/fp32 batch-1 p50 {o8['p50'] / o32['p50']:.2f}, "
        f"best throughput {o8['rps_best'] / o32['rps_best']:.2f}"
    )


def median_stats(runs: list[dict]) -> dict:
    """Medians of every figure, and the lowest and highest req/s: the spread of one
    target across rounds, which on this machine is often larger than the gap between
    targets."""
    stats = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    if "rps" in runs[0]:
        stats["rps_low"] = min(run["rps"] for run in runs)
        stats["rps_high"] = max(run["rps"] for run in runs)
    return stats


def measure_model(name, shape, requests, repeats, onnx_path, ports, only=None) -> list:
    """Rows for one model: every target (or those in `only`) `repeats` times in
    interleaved rounds, medians."""
    infer = "/inference.GRPCInferenceService/ModelInfer"
    request = infer_request(name, shape)
    reply_size = response_size(ports["batch"], request)
    http_body = http_infer_body(name, shape)
    http_port = free_port()
    http_reply_size = http_response_size(ports["http"], name, http_body)
    process = subprocess.Popen(
        [PY, __file__, "--http-echo", str(http_port), str(http_reply_size)],
        stderr=subprocess.PIPE,
    )
    processes = [process]
    start_wait(http_port, process)
    wait_s = ort_numbers(onnx_path, shape, min(requests, 200), serving=False)["p50"] / 1e3
    echo_ports = {}
    for threads in (False, True):
        port = free_port()
        process = subprocess.Popen(
            [
                PY,
                __file__,
                "--echo",
                str(port),
                str(reply_size),
                str(int(threads)),
                str(wait_s),
                "" if threads else str(onnx_path),
            ],
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        start_wait(port, process)
        echo_ports["echo-threads" if threads else "echo-aio"] = port
    threads_port = free_port()
    process = subprocess.Popen(
        [PY, __file__, "--threads-server", str(threads_port), str(onnx_path)],
        stderr=subprocess.PIPE,
    )
    processes.append(process)
    start_wait(threads_port, process)
    targets = {
        "echo-aio": (echo_ports["echo-aio"], ECHO),
        "echo-wait": (echo_ports["echo-aio"], ECHO_WAIT),
        "echo-model": (echo_ports["echo-aio"], ECHO_MODEL),
        "echo-threads": (echo_ports["echo-threads"], ECHO),
        "netc": (ports["batch"], infer),
        "netc-nobatch": (ports["nobatch"], infer),
        "netc-on-threads": (threads_port, infer),
        "http-echo": (http_port, "/v2/echo"),
        "netc-http": (ports["http"], f"/v2/models/{name}/infer"),
    }
    one_caller = ("echo-wait", "echo-model")
    chosen = [t for t in targets if only is None or t in only]
    at = {1: chosen, 16: [t for t in chosen if t not in one_caller]}
    runs = {(c, target): [] for c in (1, 16) for target in at[c]}
    ort_runs = {False: [], True: []}
    try:
        for _ in range(repeats):
            for serving in (False, True):
                ort_runs[serving].append(ort_numbers(onnx_path, shape, min(requests, 500), serving))
            for c in (1, 16):
                for target in at[c]:
                    port, method = targets[target]
                    payload = http_body if method.startswith("/v2/") else request
                    runs[(c, target)].append(drive(port, method, payload, c, requests))
    finally:
        for process in processes:
            process.kill()
            process.wait()
    ort_stats = {"default": median_stats(ort_runs[False]), "serving": median_stats(ort_runs[True])}
    return [
        (
            name,
            c,
            len(request),
            {t: median_stats(runs[(c, t)]) for t in at[c]},
            ort_stats,
            {t: runs[(c, t)] for t in at[c]},
        )
        for c in (1, 16)
    ]


def start_wait(port: int, process: subprocess.Popen) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(process.stderr.read().decode()[-2000:])


def report(rows) -> None:
    print(
        f"{'model':<9} {'c':>2} {'target':<17} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f"  {'req/s low-high':>15}"
    )
    checks = []
    for name, c, size, measured, ort_stats, rounds in rows:
        for which, label in (("default", "ort (in-proc)"), ("serving", "ort (serve opts)")):
            stats = ort_stats[which]
            print(
                f"{name:<9} {c:>2} {label:<17} "
                f"{stats['rps_batch1' if c == 1 else 'rps_best']:>8.0f} "
                f"{stats['p50']:>8.2f} {stats['p99']:>8.2f}"
            )
        for target, stats in measured.items():
            print(
                f"{name:<9} {c:>2} {target:<17} {stats['rps']:>8.0f} {stats['p50']:>8.2f} "
                f"{stats['p99']:>8.2f}  {stats['rps_low']:>7.0f}-{stats['rps_high']:<7.0f}"
            )
        checks += _checks(name, c, size, measured, ort_stats, rounds)
    print()
    print("\n".join(checks))


def _http_checks(name, c, measured, rounds) -> list[str]:
    """The REST port against its floor (the aiohttp echo) and against gRPC."""
    if "netc-http" not in measured or "http-echo" not in measured:
        return []
    http, echo = measured["netc-http"], measured["http-echo"]
    each = [n["rps"] / e["rps"] for n, e in zip(rounds["netc-http"], rounds["http-echo"])]
    line = (
        f"{name} c={c}: netc-http {http['rps']:.0f} req/s = {http['rps'] / echo['rps']:.0%} "
        f"of the HTTP echo floor [round by round: {', '.join(f'{r:.0%}' for r in each)}]"
    )
    if "netc" in measured:
        line += f"; HTTP/gRPC {http['rps'] / measured['netc']['rps']:.2f}"
    return [line]


def _checks(name, c, size, measured, ort_stats, rounds) -> list[str]:
    """The issue's targets against default onnxruntime; in brackets, against netc's options."""
    grpc_targets = ("netc", "echo-aio", "netc-nobatch", "echo-threads", "netc-on-threads")
    needed = (*grpc_targets, *(("echo-wait", "echo-model") if c == 1 else ()))
    if not all(t in measured for t in needed):  # --only: the gRPC lines need every target
        return _http_checks(name, c, measured, rounds)
    netc, echo = measured["netc"], measured["echo-aio"]
    default, serving = ort_stats["default"], ort_stats["serving"]
    if c == 1:
        budget = default["p50"] + echo["p50"] + 0.5
        budget_serving = serving["p50"] + echo["p50"] + 0.5
        verdict = "yes" if netc["p50"] <= budget else "NO"
        floor = measured["echo-wait"]["p50"] + 0.5
        model_floor = measured["echo-model"]["p50"] + 0.5
        line = (
            f"{name} c=1: netc p50 {netc['p50']:.2f} ms <= ort p50 + echo p50 + 0.5 = "
            f"{budget:.2f} ms: {verdict} [serve opts: {budget_serving:.2f} ms; "
            f"echo-wait p50 + 0.5 = {floor:.2f} ms: {'yes' if netc['p50'] <= floor else 'NO'}; "
            f"echo-model p50 + 0.5 = {model_floor:.2f} ms: "
            f"{'yes' if netc['p50'] <= model_floor else 'NO'}]"
        )
    elif name == "digits":
        verdict = "yes" if netc["rps"] >= 0.7 * echo["rps"] else "NO"
        each = [n["rps"] / e["rps"] for n, e in zip(rounds["netc"], rounds["echo-aio"])]
        line = (
            f"{name} c=16: netc {netc['rps']:.0f} req/s = {netc['rps'] / echo['rps']:.0%} "
            f"of echo floor (target 70%): {verdict} [round by round: "
            f"{', '.join(f'{r:.0%}' for r in each)}]"
        )
    else:
        verdict = "yes" if netc["rps"] >= 0.9 * default["rps_best"] else "NO"
        line = (
            f"{name} c=16: netc {netc['rps']:.0f} req/s = "
            f"{netc['rps'] / default['rps_best']:.0%} of in-process ort best "
            f"(target 90%): {verdict} [serve opts: {netc['rps'] / serving['rps_best']:.0%}]"
        )
    return [
        line,
        f"{name} c={c}: batching on/off throughput ratio "
        f"{netc['rps'] / measured['netc-nobatch']['rps']:.2f}; aio/threads ratio: echo "
        f"{echo['rps'] / measured['echo-threads']['rps']:.2f}, netc's handler "
        f"{netc['rps'] / measured['netc-on-threads']['rps']:.2f}; request {size / 1024:.1f} KiB",
        *_http_checks(name, c, measured, rounds),
    ]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        load(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--http-load":
        http_load(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--http-echo":
        http_echo_server(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--threads-server":
        threads_server(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--echo":
        echo_server(
            int(sys.argv[2]),
            int(sys.argv[3]),
            bool(int(sys.argv[4])),
            float(sys.argv[5]),
            sys.argv[6],
        )
    else:
        main()

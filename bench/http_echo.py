"""Which asyncio HTTP stack netc's REST port is built on: an echo on each, measured alike.

Targets, each a server in its own process answering POST /echo with the body it got:
  aiohttp      aiohttp.web (one event loop, as netc's gRPC server runs on)
  starlette    a Starlette app under uvicorn (ASGI; uvloop and httptools when present)
The load generator is one separate process (an aiohttp client: C concurrent callers,
keep-alive connections, the body built once), the same for both. Targets run in
interleaved rounds, `--repeats` times, and the table shows each one's median.

    .venv/bin/python bench/http_echo.py [--requests 4000] [--size 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time

PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aiohttp_server(port: int) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/octet-stream")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/echo", echo)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def starlette_server(port: int) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error", access_log=False)


async def drive(port: int, size: int, concurrency: int, requests: int) -> dict:
    """Requests per second and latency percentiles (ms) of `requests` echoes."""
    import aiohttp

    body = b"x" * size
    url = f"http://127.0.0.1:{port}/echo"
    latencies: list[float] = []
    left = [requests]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(20):  # warm-up: connections open, code paths hot
            async with session.post(url, data=body) as answer:
                await answer.read()

        async def caller() -> None:
            while left[0] > 0:
                left[0] -= 1
                start = time.perf_counter()
                async with session.post(url, data=body) as answer:
                    got = await answer.read()
                latencies.append(time.perf_counter() - start)
                assert len(got) == size, (len(got), size)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "rps": requests / elapsed,
        "p50": 1e3 * latencies[len(latencies) // 2],
        "p99": 1e3 * latencies[int(len(latencies) * 0.99)],
    }


def ready(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--size", type=int, default=4096, help="body bytes (4 KiB: a digit)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", choices=("aiohttp", "starlette"), help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)  # port,size,concurrency,requests
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        {"aiohttp": aiohttp_server, "starlette": starlette_server}[args.serve](args.port)
        return
    if args.load:
        port, size, concurrency, requests = map(int, args.load.split(","))
        print(json.dumps(asyncio.run(drive(port, size, concurrency, requests))))
        return
    targets = ("aiohttp", "starlette")
    ports = {name: free_port() for name in targets}
    servers = [
        subprocess.Popen([PY, __file__, "--serve", name, "--port", str(ports[name])])
        for name in targets
    ]
    try:
        for port in ports.values():
            ready(port)
        results: dict = {}
        for _ in range(args.repeats):
            for concurrency in (1, 16):
                for name in targets:
                    spec = f"{ports[name]},{args.size},{concurrency},{args.requests}"
                    out = subprocess.run(
                        [PY, __file__, "--load", spec], capture_output=True, text=True, check=True
                    ).stdout
                    results.setdefault((name, concurrency), []).append(json.loads(out))
    finally:
        for server in servers:
            server.terminate()
            server.wait()
    print(f"{'target':<10} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs aiohttp':>10}")
    for concurrency in (1, 16):
        base = statistics.median(r["rps"] for r in results[("aiohttp", concurrency)])
        for name in targets:
            runs = results[(name, concurrency)]
            rps = statistics.median(r["rps"] for r in runs)
            p50 = statistics.median(r["p50"] for r in runs)
            p99 = statistics.median(r["p99"] for r in runs)
            ratio = rps / base
            print(f"{name:<10} {concurrency:>3} {rps:>8.0f} {p50:>7.2f} {p99:>7.2f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()

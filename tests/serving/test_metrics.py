"""Prometheus metrics over HTTP: answers, and what a misbehaving client gets."""

import asyncio

from netc.serving.metrics import start_metrics_server
from netc.serving.repository import ModelRepository


def _exchange(tmp_path, request: bytes) -> bytes:
    async def scenario():
        server = await start_metrics_server(ModelRepository(tmp_path), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            server.close()
            await server.wait_closed()

    return asyncio.run(scenario())


def test_metrics_are_served_and_other_paths_are_not_found(tmp_path):
    answer = _exchange(tmp_path, b"GET /metrics?name=x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK") and b"# TYPE nv_inference_count counter" in answer
    assert _exchange(tmp_path, b"GET / HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")


def test_oversized_requests_get_431_not_a_dropped_connection(tmp_path):
    long_line = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert _exchange(tmp_path, long_line).startswith(b"HTTP/1.1 431")
    endless = b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n"
    assert _exchange(tmp_path, endless).startswith(b"HTTP/1.1 431")

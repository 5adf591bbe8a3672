"""Prometheus metrics over HTTP (`GET /metrics`, port 8002 by default).

Names follow Triton's (`nv_inference_*`), so existing dashboards fit. The
HTTP side is a few lines of asyncio: the exposition format is plain text.
"""

from __future__ import annotations

import asyncio

from netc.serving.repository import ModelRepository

REQUEST_DEADLINE_S = 10.0  # to send the request line and headers
MAX_HEADERS = 100

_COUNTERS = (  # (metric, help, value from ModelStats)
    (
        "nv_inference_request_success",
        "Number of successful inference requests",
        lambda s: s.success.count,
    ),
    ("nv_inference_request_failure", "Number of failed inference requests", lambda s: s.fail.count),
    (
        "nv_inference_count",
        "Number of inferences performed (batch elements)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions (batches)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative end-to-end request duration",
        lambda s: (s.success.ns + s.fail.ns) // 1000,
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative time requests spent queued",
        lambda s: s.queue.ns // 1000,
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative model execution time",
        lambda s: s.compute_infer.ns // 1000,
    ),
)


def _escape(value: str) -> str:
    """A label value in Prometheus' text format: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(repository: ModelRepository) -> str:
    lines = []
    for metric, text, value in _COUNTERS:
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} counter"]
        for name, versions in sorted(repository.models.items()):
            for version, model in sorted(versions.items()):
                labels = f'model="{_escape(name)}",version="{_escape(version)}"'
                lines.append(f"{metric}{{{labels}}} {value(model.stats)}")
    lines += [
        "# HELP nv_model_ready Whether the model version is ready (1) or not (0)",
        "# TYPE nv_model_ready gauge",
    ]
    for entry in repository.index():
        ready = 1 if entry.state == "READY" else 0
        labels = f'model="{_escape(entry.name)}",version="{_escape(entry.version)}"'
        lines.append(f"nv_model_ready{{{labels}}} {ready}")
    return "\n".join(lines) + "\n"


async def start_metrics_server(
    repository: ModelRepository, host: str, port: int
) -> asyncio.AbstractServer:
    async def read_request(reader: asyncio.StreamReader) -> bytes:
        """The request line; the headers are read and ignored, at most `MAX_HEADERS`."""
        request = await reader.readline()
        for _ in range(MAX_HEADERS):
            if await reader.readline() in (b"\r\n", b"\n", b""):
                return request
        raise ValueError("too many header lines")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:  # the whole request within the deadline: a slow sender holds nothing long
                request = await asyncio.wait_for(read_request(reader), REQUEST_DEADLINE_S)
            except ValueError:  # a line over the reader's 64 KiB limit, or endless headers
                request, status = b"", "431 Request Header Fields Too Large"
                body = b"request header too large\n"
            else:
                path = request.split()[1] if len(request.split()) > 1 else b"/"
                if path.split(b"?", 1)[0] == b"/metrics":  # scrapers may add a query
                    body, status = render(repository).encode(), "200 OK"
                else:
                    body, status = b"not found: try /metrics\n", "404 Not Found"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)

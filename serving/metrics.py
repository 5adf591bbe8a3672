"""Prometheus metrics over HTTP (`GET /metrics`, port 8002 by default), by prometheus_client.

Each server has its own `CollectorRegistry` (`metrics_registry`), whose collector reads
the repository at every scrape: the models' `ModelStats` (serving/stats.py), their
batchers' queues and the repository's index. A model version's series go when it is
unloaded, as Triton's do. Per model (`model`, `version` labels, as Triton's):

Triton's names, for the dashboards people already have:
    nv_inference_request_success, nv_inference_request_failure   requests
    nv_inference_count, nv_inference_exec_count                  samples, model runs
    nv_inference_request_duration_us, nv_inference_queue_duration_us,
    nv_inference_compute_input_duration_us, nv_inference_compute_infer_duration_us,
    nv_inference_compute_output_duration_us                      cumulative µs
    nv_inference_pending_request_count   gauge: requests queued, not yet running
    nv_model_ready                       gauge: 1 ready, 0 not (every model of the index)
These are written as `untyped`: prometheus_client names every counter `<name>_total`,
and Triton's names have no such suffix; PromQL's rate() and increase() read them alike.

netc's own, with Prometheus' conventions (seconds, `_total`):
    netc_request_duration_seconds   histogram: a successful request, received to answered
    netc_queue_duration_seconds     histogram: a successful request's time queued
    netc_compute_duration_seconds   histogram: one model run (a batch)
    netc_batch_size                 histogram: samples in one model run
    netc_requests_in_flight         gauge: received, not yet answered
    netc_request_failures_total     counter, by `code`: the gRPC status a request failed with
    netc_model_load_failures_total  counter, by `model`: loads and reloads that failed
and prometheus_client's process_* series (resident memory, CPU, open files).

The HTTP side is prometheus_client's WSGI app on a threading server with bounds:
at most `max_connections` connections at once (more are closed at accept), and each
has `deadline_s` for its TLS handshake and its whole request, however slowly it
sends, so neither idle nor slow clients can hold the port. With an `ssl.SSLContext`
it serves HTTPS (the handshake runs on the connection's thread, never the acceptor's).
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    UnknownMetricFamily,
)
from prometheus_client.utils import floatToGoString

from netc.serving.model import ServedModel
from netc.serving.repository import IndexEntry, ModelRepository
from netc.serving.stats import Histogram, ModelStats

MAX_CONNECTIONS = 32
DEADLINE_S = 10.0  # for a connection's TLS handshake, and again for its request and answer
LABELS = ("model", "version")

# (name, help, value from ModelStats): Triton's counters
_TRITON_COUNTERS: tuple[tuple[str, str, Callable[[ModelStats], int]], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
     lambda s: s.success.count),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes",
     lambda s: s.fail.count),
    ("nv_inference_count", "Number of inferences performed (a batch of 8 counts 8)",
     lambda s: s.inference_count),
    ("nv_inference_exec_count", "Number of model executions performed (a batch counts 1)",
     lambda s: s.execution_count),
    ("nv_inference_request_duration_us", "Cumulative inference request duration in µs",
     lambda s: (s.success.ns + s.fail.ns) // 1000),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in µs",
     lambda s: s.queue.ns // 1000),
    ("nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in µs (decoding requests)",
     lambda s: s.compute_input.ns // 1000),
    ("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in µs",
     lambda s: s.compute_infer.ns // 1000),
    ("nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in µs (encoding answers)",
     lambda s: s.compute_output.ns // 1000),
)  # fmt: skip

# (name, help, the histogram in ModelStats, its observations' unit in ns: 1e9 for seconds)
_HISTOGRAMS: tuple[tuple[str, str, Callable[[ModelStats], Histogram], float], ...] = (
    ("netc_request_duration_seconds", "Successful requests, from received to answered",
     lambda s: s.request_histogram, 1e9),
    ("netc_queue_duration_seconds", "Time successful requests spent queued",
     lambda s: s.queue_histogram, 1e9),
    ("netc_compute_duration_seconds", "Model runs (one per batch): merge, run and split",
     lambda s: s.compute_histogram, 1e9),
    ("netc_batch_size", "Samples in one model run", lambda s: s.batch_histogram, 1.0),
)  # fmt: skip


def _models(repository: ModelRepository) -> list[ServedModel]:
    """Every loaded model version. Scrapes run on the HTTP server's threads while the
    event loop changes the repository: each dict is copied in one C-level step."""
    return [
        model for versions in list(repository.models.values()) for model in list(versions.values())
    ]


def _histogram(name: str, text: str, models: list[ServedModel], of, unit: float) -> Metric:
    family = HistogramMetricFamily(name, text, labels=LABELS)
    for model in models:
        histogram = of(model.stats)
        counts = histogram.cumulative()
        buckets = [
            (floatToGoString(bound / unit), count) for bound, count in zip(histogram.bounds, counts)
        ]
        buckets.append(("+Inf", counts[-1]))
        family.add_metric([model.name, model.version], buckets, histogram.total / unit)
    return family


class RepositoryCollector:
    """The metrics of one server's repository, read at each scrape."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def describe(self) -> Iterable[Metric]:
        """The families without samples (prometheus_client's registry asks for names)."""
        return self._families([], [], {})

    def collect(self) -> Iterable[Metric]:
        repository, tries = self.repository, 3
        while True:  # a model swapped in or out while this thread read: read again
            try:
                models, index = _models(repository), repository.index()
                return self._families(models, index, dict(repository.load_failures))
            except (RuntimeError, KeyError):
                tries -= 1
                if not tries:
                    raise

    def _families(
        self, models: list[ServedModel], index: list[IndexEntry], load_failures: dict[str, int]
    ) -> Iterator[Metric]:
        labelled = [(model, [model.name, model.version]) for model in models]
        for name, text, value in _TRITON_COUNTERS:
            family = UnknownMetricFamily(name, text, labels=LABELS)
            for model, labels in labelled:
                family.add_metric(labels, value(model.stats))
            yield family
        for name, text, of, unit in _HISTOGRAMS:
            yield _histogram(name, text, models, of, unit)
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Requests queued for the model, not yet running",
            labels=LABELS,
        )
        in_flight = GaugeMetricFamily(
            "netc_requests_in_flight", "Requests received and not yet answered", labels=LABELS
        )
        failures = CounterMetricFamily(
            "netc_request_failures",
            "Failed requests by the gRPC status they were answered with",
            labels=(*LABELS, "code"),
        )
        for model, labels in labelled:
            batcher = model.batcher
            pending.add_metric(labels, batcher.waiting() if batcher is not None else 0)
            in_flight.add_metric(labels, model.stats.in_flight)
            for code, count in sorted(list(model.stats.failures.items())):
                failures.add_metric([*labels, code], count)
        ready = GaugeMetricFamily(
            "nv_model_ready", "Whether the model version is ready (1) or not (0)", labels=LABELS
        )
        for entry in index:
            ready.add_metric([entry.name, entry.version], 1 if entry.state == "READY" else 0)
        loads = CounterMetricFamily(
            "netc_model_load_failures",
            "Loads and reloads of the model that failed (loaded versions serve on)",
            labels=("model",),
        )
        for name, count in sorted(load_failures.items()):
            loads.add_metric([name], count)
        yield from (pending, in_flight, failures, ready, loads)


def metrics_registry(repository: ModelRepository) -> CollectorRegistry:
    """A registry of the repository's metrics and the process' own (one per server:
    tests run several servers in one process)."""
    registry = CollectorRegistry()
    registry.register(RepositoryCollector(repository))
    ProcessCollector(registry=registry)
    return registry


def render(repository: ModelRepository) -> str:
    """The metrics as a scrape reads them (Prometheus' text format)."""
    return generate_latest(metrics_registry(repository)).decode()


# The HTTP side


def _only_metrics(app: Callable) -> Callable:
    """prometheus_client's app answers every path; this endpoint is `/metrics`."""

    def routed(environ, start_response):
        if environ.get("PATH_INFO") in ("/metrics", "/metrics/"):
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: the metrics are at /metrics\n"]

    return routed


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each allowed only what is left of the connection's deadline: a
    client sending a byte at a time is cut off at the deadline, not at each pause."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took longer than the metrics server allows")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class _Handler(WSGIRequestHandler):
    """wsgiref's handler (one request per connection, then closed), silent, with the
    server's deadline on reading the request."""

    def setup(self) -> None:
        super().setup()
        deadline = time.monotonic() + self.server.deadline_s  # type: ignore[attr-defined]
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, deadline))

    def log_message(self, format: str, *args) -> None:
        pass


class MetricsServer(ThreadingMixIn, WSGIServer):
    """A thread per connection, at most `max_connections` at once."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        family: socket.AddressFamily,
        *,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        deadline_s: float,
    ) -> None:
        self.address_family = family
        self.ssl_context, self.deadline_s = ssl_context, deadline_s
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    def process_request(self, request, client_address) -> None:
        if not self.slots.acquire(blocking=False):  # full: this one is closed at once
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: give its slot back
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            if self.ssl_context is not None:
                request = self.ssl_context.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False
                )
                request.settimeout(self.deadline_s)
                request.do_handshake()
            self.finish_request(request, client_address)
        except Exception:  # a client that timed out, hung up or failed the handshake
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def handle_error(self, request, client_address) -> None:
        logging.getLogger("netc.serving").debug(
            "metrics: connection from %s ended with an error", client_address, exc_info=True
        )

    def close(self) -> None:
        """Stop accepting and free the port (connections being answered finish alone)."""
        self.shutdown()
        self.server_close()


def start_metrics_server(
    repository: ModelRepository,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_connections: int = MAX_CONNECTIONS,
    deadline_s: float = DEADLINE_S,
) -> MetricsServer:
    """Serve the repository's metrics at http(s)://HOST:PORT/metrics on a thread of its
    own; port 0 picks a free one (`.port`). An OSError says why the port cannot be bound."""
    family, _, _, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # IPv4's (host, port) or IPv6's (host, port, flow, scope): typeshed's union for the
    # address also holds (int, bytes), which neither family gives
    server = MetricsServer(
        cast(tuple[str, int], address[:2]),
        family,
        ssl_context=ssl_context,
        max_connections=max_connections,
        deadline_s=deadline_s,
    )
    server.set_app(_only_metrics(make_wsgi_app(metrics_registry(repository))))
    server.thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
        name="netc-metrics",
    )  # fmt: skip
    server.thread.start()
    return server

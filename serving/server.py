"""`netc serve`: the gRPC server (grpc.aio), the REST port (serving/http/, aiohttp on the
same event loop, calling the same services' code) and the metrics endpoint, put together.

Services: `inference.GRPCInferenceService` (Triton/KServe v2), netc's vision
service, `grpc.health.v1.Health` (SERVING once every model is loaded) and
server reflection. Each service module offers `add_to_server(server,
repository)` returning the full names of the services it added.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from netc.serving import auth, events, tls, triton_service, vision_service
from netc.serving.auth import AuthInterceptor
from netc.serving.errors import ServingError
from netc.serving.metrics import MetricsServer, start_metrics_server
from netc.serving.repository import ModelRepository
from netc.serving.tls import ServerTls

# grpc.health.v1 service name that is SERVING while the process answers, whatever its
# models' state: deploy/'s liveness probe (readiness asks for "", every model served).
LIVENESS = "liveness"
DEFAULT_MESSAGE_MB = 128  # gRPC's 4 MiB default is too small for images and score maps


@dataclass
class ServerOptions:
    host: str = "0.0.0.0"
    port: int = 8001
    metrics_port: int | None = 8002
    http_port: int | None = None  # the REST port (serving/http/): netc serve's is 8000
    max_message_mb: int = DEFAULT_MESSAGE_MB
    poll_seconds: float | None = None  # rescan the repository this often (hot reload)
    max_image_pixels: int | None = None  # vision service limit (None: images.MAX_PIXELS)
    log_level: str = "warning"  # netc serve's stderr (serving/events.py); tests leave logging be
    grace_s: float = 30.0  # on SIGTERM/SIGINT, calls in flight and queued may finish this long
    # Security (serving/tls.py, serving/auth.py): PEM files, token files (one a line)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # mutual TLS: clients need a certificate it signed
    auth_token_file: Path | None = None
    admin_token_file: Path | None = None  # RepositoryModelLoad/Unload need its tokens


@dataclass
class RunningServer:
    server: grpc.aio.Server
    repository: ModelRepository
    port: int
    metrics_port: int | None
    metrics: MetricsServer | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)
    auth: AuthInterceptor | None = None  # its reload() reads the token files again
    tls: ServerTls | None = None
    health: Any = None  # grpc.health.v1's servicer
    http: Any = None  # serving.http.HttpServer: the REST port
    http_port: int | None = None

    async def stop(self, grace: float = 1.0) -> None:
        """Shut down: health NOT_SERVING and ServerReady false at once; new inference
        calls refused (UNAVAILABLE, by the repository, while the port still answers: a call
        that gRPC itself drops at its shutdown reads CANCELLED, which clients do not
        retry); the calls queued and running answered for up to `grace` seconds; then gRPC
        stops (what still runs is cancelled) and every model closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.repository.stopping = True
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        for task in self.tasks:
            task.cancel()
        if self.metrics is not None:
            self.metrics.close()
        await self.repository.drain(deadline)
        await self.server.stop(max(0.0, deadline - loop.time()))
        if self.http is not None:
            await self.http.close()
        await self.repository.close()


def _add_health_and_reflection(server: grpc.aio.Server, names: list[str]):
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    from netc.protos import reflection_pool

    # our stubs live in netc's own descriptor pool (see protos/__init__.py)
    reflection.enable_server_reflection(
        [*names, reflection.SERVICE_NAME], server, pool=reflection_pool()
    )
    return servicer, health_pb2


def _listen(
    server: grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind the gRPC port; a failure is one OSError in netc's words, with the system's
    reason. gRPC's C core writes its own line to stderr when a bind fails ("E1207 ...
    add_port.cc:83] Failed to add port ...", then grpcio's RuntimeError asks for
    GRPC_VERBOSITY=debug); GRPC_VERBOSITY is read once, at import, so the core's stderr
    is held for the call instead, and given back if the bind succeeds."""
    with _held_stderr() as held:
        try:
            address = f"{host}:{port}"
            bound = (
                server.add_insecure_port(address)
                if credentials is None
                else server.add_secure_port(address, credentials)
            )
        except RuntimeError:  # grpcio's way of saying the port could not be bound
            bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: {_bind_error(host, port, held)}")
    if held:
        os.write(2, held[0])
    return bound


@contextlib.contextmanager
def _held_stderr() -> Iterator[list[bytes]]:
    """What is written to file descriptor 2 meanwhile (by C code too), kept aside: the
    list holds it once the block ends."""
    sys.stderr.flush()
    saved = os.dup(2)
    held: list[bytes] = []
    with tempfile.TemporaryFile() as spool:
        os.dup2(spool.fileno(), 2)
        try:
            yield held
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            spool.seek(0)
            held += [data] if (data := spool.read()) else []


def _bind_error(host: str, port: int, core_log: list[bytes]) -> str:
    """Why the port cannot be bound, as the system says it ("Address already in use"),
    found by binding it the way gRPC does; else the end of the core's own line."""
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve '{host}' ({exc.strerror})"
    for family, kind, protocol, _, address in addresses:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                return exc.strerror or str(exc)
    lines = b"".join(core_log).decode(errors="replace").strip().splitlines()
    return lines[-1].split("] ", 1)[-1] if lines else "gRPC could not bind it"


async def start(repository_path: Path, options: ServerOptions) -> RunningServer:
    """Load the repository, start gRPC (and metrics), mark SERVING when models are ready.
    TLS and token files are read and checked first: a mistake is a UserError naming the
    file, before anything listens."""
    server_tls = tls.from_options(options)
    interceptor = auth.from_options(options)
    repository = ModelRepository(repository_path)
    limit = options.max_message_mb * 2**20
    server = grpc.aio.server(
        interceptors=[interceptor] if interceptor is not None else None,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    names: list[str] = []
    names += triton_service.add_to_server(server, repository)
    names += vision_service.add_to_server(
        server, repository, max_image_pixels=options.max_image_pixels, max_message_bytes=limit
    )
    health, health_pb2 = _add_health_and_reflection(server, names)
    credentials = server_tls.grpc_credentials() if server_tls is not None else None
    port = _listen(server, options.host, options.port, credentials)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    http = None
    if options.http_port is not None:
        try:
            http = await _start_http(repository, options, limit, interceptor, server_tls)
        except OSError as exc:  # stop what started, then say which port
            await server.stop(0)
            await repository.close()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)  # asyncio's is long
            raise OSError(
                f"cannot serve HTTP on {options.host}:{options.http_port}: {reason}"
            ) from None

    async def update_health() -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if repository.ready() else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *names]:
            await health.set(name, status)

    await repository.load_all()  # NOT_SERVING until every model has had its try
    await update_health()
    repository.on_change.append(update_health)
    running = RunningServer(
        server, repository, port, options.metrics_port, auth=interceptor, tls=server_tls
    )
    running.health = health
    if http is not None:
        running.http, running.http_port = http, http.port
    if options.metrics_port is not None:
        try:
            running.metrics = start_metrics_server(
                repository,
                options.host,
                options.metrics_port,
                ssl_context=server_tls.ssl_context() if server_tls is not None else None,
            )
        except OSError as exc:  # stop what started, then say which port
            await running.stop(grace=0)
            raise OSError(
                f"cannot serve metrics on {options.host}:{options.metrics_port}: {exc.strerror}"
            ) from None
        running.metrics_port = running.metrics.port
    if options.poll_seconds:
        running.tasks.append(asyncio.create_task(_poll(repository, options.poll_seconds)))
    return running


async def _start_http(
    repository: ModelRepository,
    options: ServerOptions,
    max_body: int,
    interceptor: AuthInterceptor | None,
    server_tls: ServerTls | None,
):
    """The REST port on this event loop, with gRPC's message limit, tokens and TLS.
    (aiohttp is imported here: a server without the REST port does without it.)"""
    from netc.serving.http import build_app, start_http

    app = build_app(
        repository, max_body=max_body, max_pixels=options.max_image_pixels, auth=interceptor
    )
    ssl_context = server_tls.ssl_context() if server_tls is not None else None
    return await start_http(app, options.host, options.http_port or 0, ssl_context)


async def _poll(repository: ModelRepository, seconds: float) -> None:
    """Hot reload: load models that appeared or changed on disk, unload those that went.
    A model loads once its files stood still for one poll: a model file being copied in
    (not renamed in, as `netc export --repository` does) is not read half-written.
    One model's trouble is logged and polling goes on."""
    loaded = {name: _fingerprint(repository.root / name) for name in repository.names()}
    scanned = dict(loaded)  # what the previous scan saw
    while True:
        await asyncio.sleep(seconds)
        try:
            await _poll_once(repository, loaded, scanned)
        except Exception:  # a folder vanishing mid-scan, an unreadable file, ...
            logging.getLogger("netc.serving").exception("repository poll")


async def _poll_once(repository: ModelRepository, loaded: dict, scanned: dict) -> None:
    """One scan: `loaded` holds each model's files as last loaded, `scanned` as last seen."""
    names = repository.names()
    for name in (set(loaded) | set(scanned)) - set(names):
        loaded.pop(name, None)
        scanned.pop(name, None)
        if name in repository.models or name in repository.states:
            await repository.unload(name)
    for name in names:
        current = _fingerprint(repository.root / name)
        steady, scanned[name] = scanned.get(name) == current, current
        if steady and loaded.get(name) != current:
            loaded[name] = current
            try:
                await repository.load(name)
            except ServingError:  # logged, and the index says why; the old versions serve
                pass


def _fingerprint(folder: Path) -> tuple:
    """What a reload depends on: the version folders' model files and every file beside
    them (config.yaml, a labels_file)."""
    try:
        files = [*sorted(folder.glob("*/model.onnx")), *sorted(folder.iterdir())]
    except OSError:  # the folder went away
        return ()
    stamps = []
    for path in files:
        try:
            stat = path.stat()
            if path.is_file():
                stamps.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:  # removed while we looked
            continue
    return tuple(stamps)


def serve_forever(repository_path: Path, options: ServerOptions) -> int:
    """Run until SIGINT/SIGTERM; prints where it listens and what it serves."""

    events.configure(options.log_level)

    async def main() -> None:
        running = await start(repository_path, options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():  # a second signal: the calls still running are cancelled now
                running.tasks.append(loop.create_task(running.server.stop(0)))
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if running.auth is not None:  # SIGHUP: read the token files again
            loop.add_signal_handler(signal.SIGHUP, _reload_tokens, running.auth)
        for entry in running.repository.index():
            detail = f": {entry.reason}" if entry.reason else ""
            print(
                f"model {entry.name} version {entry.version or '-'} {entry.state}{detail}",
                file=sys.stderr,
            )
        scheme = "https" if running.tls is not None else "http"
        metrics = (
            f", metrics on {scheme}://{options.host}:{running.metrics_port}/metrics"
            if running.metrics_port
            else ""
        )
        http = (
            f", HTTP on {scheme}://{options.host}:{running.http_port}" if running.http_port else ""
        )
        print(
            f"netc serving gRPC on {options.host}:{running.port}{_security(running)}{http}"
            f"{metrics}",
            file=sys.stderr,
            flush=True,
        )
        await stop.wait()
        await running.stop(options.grace_s)

    asyncio.run(main())
    return 0


def _security(running: RunningServer) -> str:
    """' (mutual TLS, tokens)': what a client needs, for the start-up line."""
    needs = []
    if running.tls is not None:
        needs.append("mutual TLS" if running.tls.client_ca is not None else "TLS")
    if running.auth is not None:
        needs.append("tokens" if running.auth.tokens is not None else "admin tokens")
    return f" ({', '.join(needs)})" if needs else ""


def _reload_tokens(interceptor: AuthInterceptor) -> None:
    for line in interceptor.reload():
        print(line, file=sys.stderr, flush=True)


class BackgroundServer:
    """A server on its own event loop in a thread: for tests, benchmarks and the demo."""

    def __init__(self, repository_path: Path, options: ServerOptions) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.running: RunningServer = asyncio.run_coroutine_threadsafe(
            start(repository_path, options), self.loop
        ).result(timeout=300)

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=300)

    def stop(self) -> None:
        self.call(self.running.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

"""The REST port's aiohttp application: its routes, and what every request goes through.

Middlewares, outermost first:
1. `_errors`: whatever a handler raised becomes `{"error": "..."}` with the HTTP status
   of the gRPC code netc chooses for it (`serving.errors.failure`, `HTTP_STATUS`); an
   unexpected exception is a 500, logged as our bug; aiohttp's own refusals (no such
   route, wrong method, a body over the limit) are worded alike.
2. `_auth`: the bearer-token rules of serving/auth.py (`AuthInterceptor.refusal`):
   health and the page are open, repository load/unload are admin calls, the rest
   needs a token when a token file is given. The token is the `Authorization: Bearer`
   header.
"""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web

from netc.serving.auth import AuthInterceptor, bearer_token
from netc.serving.errors import failure
from netc.serving.repository import ModelRepository
from netc.serving.triton_service import TritonService
from netc.serving.vision_service import VisionServicer

log = logging.getLogger("netc.serving")

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,  # the client went away (nginx's code)
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})  # probes, the page


@dataclass
class Services:
    """What the handlers share: the gRPC servicers' code, the limits and the tokens."""

    triton: TritonService
    vision: VisionServicer
    max_body: int  # bytes: the gRPC server's message limit
    auth: AuthInterceptor | None


SERVICES = web.AppKey("services", Services)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
    )


def error_response(status: int, message: str, headers: dict | None = None) -> web.Response:
    response = json_response({"error": message}, status)
    response.headers.update(headers or {})
    return response


def too_large(limit: int, size: int | None = None) -> web.Response:
    got = f" ({size:,} bytes)" if size is not None else ""
    return error_response(
        413,
        f"the request body{got} is over this server's {limit / 2**20:g} MiB limit "
        "(netc serve --max-message-mb)",
    )


async def read_body(request: web.Request) -> bytes:
    """The whole body; over the limit, a 413 before it is read when its length is known."""
    limit = services(request).max_body
    if request.content_length is not None and request.content_length > limit:
        raise _Refused(too_large(limit, request.content_length))
    return await request.read()  # aiohttp's client_max_size stops a longer chunked body


class _Refused(Exception):
    """Carries a finished error response out of a handler."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.text)
        self.response = response


@web.middleware
async def _errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Refused as refused:
        return refused.response
    except web.HTTPRequestEntityTooLarge:
        return too_large(services(request).max_body)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 404:
            return error_response(404, f"no such endpoint: {request.method} {request.path}")
        if exc.status == 405:
            allowed = exc.headers.get("Allow", "")
            return error_response(
                405, f"{request.path} does not take {request.method} (it takes {allowed})"
            )
        return error_response(exc.status, exc.text or exc.reason)
    except Exception as exc:  # every failure becomes an answer, never a crash
        code, message = failure(exc, f"{request.method} {request.path}")
        return error_response(HTTP_STATUS.get(code, 500), message)


def _is_admin_call(request: web.Request) -> bool:
    return request.path.startswith("/v2/repository/models/") and request.path.endswith(
        ("/load", "/unload")
    )


@web.middleware
async def _auth(request: web.Request, handler) -> web.StreamResponse:
    auth = services(request).auth
    if auth is None or request.path in OPEN_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization")
    token = bearer_token([("authorization", header)] if header is not None else [])
    admin_call = _is_admin_call(request)
    call = request.path.rsplit("/", 1)[-1] if admin_call else f"{request.method} {request.path}"
    refused = auth.refusal(token, call, admin_call=admin_call, header="header")
    if refused is None:
        return await handler(request)
    code, message = refused
    log.debug("refused %s %s: %s", request.method, request.path, code.name)
    challenge = {"WWW-Authenticate": "Bearer"} if code == grpc.StatusCode.UNAUTHENTICATED else {}
    return error_response(HTTP_STATUS[code], message, challenge)


def build_app(
    repository: ModelRepository,
    *,
    max_body: int,
    max_pixels: int | None = None,
    auth: AuthInterceptor | None = None,
) -> web.Application:
    from netc.serving.http import kserve_routes, page, vision_routes

    app = web.Application(middlewares=[_errors, _auth], client_max_size=max_body)
    app[SERVICES] = Services(
        triton=TritonService(repository),
        vision=VisionServicer(repository, max_pixels=max_pixels, max_message_bytes=max_body),
        max_body=max_body,
        auth=auth,
    )
    kserve_routes.add_routes(app)
    vision_routes.add_routes(app)
    page.add_routes(app)
    return app


@dataclass
class HttpServer:
    runner: web.AppRunner
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_http(
    app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> HttpServer:
    """Serve `app` on the running event loop (the gRPC server's); port 0 picks a free one.
    An address that cannot be bound is an OSError."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return HttpServer(runner, runner.addresses[0][1])

"""KServe v2 REST (the Open Inference Protocol) and Triton's extensions to it.

Each route turns its request into the gRPC service's message, asks `TritonService`
(`call` for the unary handlers, `_infer` for inference: the same checks, queue,
batching, stats and metrics as gRPC) and writes the answer as JSON, protobuf's
JSON mapping with Triton's field names and int64s as numbers. Routes:

    GET  /v2                                         server metadata
    GET  /v2/health/live, /v2/health/ready           200, or 503 while not ready
    GET  /v2/models/{name}[/versions/{v}]            model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready      200, or the reason (404, 503)
    GET  /v2/models/{name}[/versions/{v}]/config     Triton's model configuration
    GET  /v2/models[/{name}[/versions/{v}]]/stats    statistics
    POST /v2/models/{name}[/versions/{v}]/infer      inference (serving/http/wire.py)
    POST /v2/repository/index                        the repository's models
    POST /v2/repository/models/{name}/load, /unload  repository control (admin)
Shared memory, tracing and logging settings answer 501, as over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from google.protobuf import json_format

from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.errors import InvalidRequest, Unsupported, clip
from netc.serving.http.app import error_response, json_response, read_body, services
from netc.serving.http.wire import (
    HEADER_LENGTH,
    infer_answer,
    infer_call,
    parse_header,
    set_parameters,
)

THREAD_BODY = 1 << 18  # JSON bodies over 256 KiB are parsed off the event loop
VERSIONED = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


def as_json(message) -> dict:
    """A protobuf answer in the JSON Triton's HTTP API writes: its proto field names,
    int64s as numbers, fields at their defaults included."""
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        unquote_int64_if_possible=True,
    )


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


async def server_metadata(request: web.Request) -> web.Response:
    answer = await services(request).triton.call("ServerMetadata", pb.ServerMetadataRequest())
    return json_response(as_json(answer))


async def live(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    answer = await services(request).triton.call("ServerReady", pb.ServerReadyRequest())
    if answer.ready:
        return web.Response(status=200)
    return error_response(503, "not every model of the repository is loaded yet")


async def model_ready(request: web.Request) -> web.Response:
    name, version = _model(request)
    services(request).triton.repository.get(name, version)  # 404 / 503 with the reason
    return web.Response(status=200)


async def model_metadata(request: web.Request) -> web.Response:
    name, version = _model(request)
    message = pb.ModelMetadataRequest(name=name, version=version)
    return json_response(as_json(await services(request).triton.call("ModelMetadata", message)))


async def model_config(request: web.Request) -> web.Response:
    name, version = _model(request)
    message = pb.ModelConfigRequest(name=name, version=version)
    answer = await services(request).triton.call("ModelConfig", message)
    return json_response(as_json(answer.config))


async def model_stats(request: web.Request) -> web.Response:
    name, version = request.match_info.get("name", ""), request.match_info.get("version", "")
    message = pb.ModelStatisticsRequest(name=name, version=version)
    return json_response(as_json(await services(request).triton.call("ModelStatistics", message)))


async def infer(request: web.Request) -> web.Response:
    """Inference: the body becomes a ModelInferRequest and takes gRPC's path (`_infer`)."""
    body = await read_body(request)
    start = time.perf_counter_ns()  # as gRPC's: from the whole request received
    name, version = _model(request)
    header_length = request.headers.get(HEADER_LENGTH)

    def decode():
        header, binary = parse_header(body, header_length)
        return infer_call(header, binary, name, version)

    all_json = header_length is None  # a binary request's JSON header is small
    call = await asyncio.to_thread(decode) if all_json and len(body) > THREAD_BODY else decode()
    triton = services(request).triton
    answer, length = await triton._infer(call.request, None, infer_answer(call), start)
    if length is None:
        return web.Response(body=answer, content_type="application/json")
    return web.Response(
        body=answer,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(length)},
    )


async def _json_body(request: web.Request) -> dict:
    """A small JSON object body; none at all reads as {}."""
    body = await read_body(request)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"the body must be a JSON object, found {clip(repr(value))}")
    return value


async def repository_index(request: web.Request) -> web.Response:
    ready_only = bool((await _json_body(request)).get("ready", False))
    message = pb.RepositoryIndexRequest(ready=ready_only)
    answer = await services(request).triton.call("RepositoryIndex", message)
    # Triton's index leaves out what is empty (a version or reason not known)
    as_dict = json_format.MessageToDict
    return json_response([as_dict(m, preserving_proto_field_name=True) for m in answer.models])


def _repository_parameters(body: dict, target) -> None:
    """Load/unload parameters (JSON) into a map of ModelRepositoryParameter."""
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest('"parameters" must be a JSON object')
    set_parameters(target, parameters, "parameters")


async def load(request: web.Request) -> web.Response:
    message = pb.RepositoryModelLoadRequest(model_name=request.match_info["name"])
    _repository_parameters(await _json_body(request), message.parameters)
    await services(request).triton.call("RepositoryModelLoad", message)
    return web.Response(status=200)


async def unload(request: web.Request) -> web.Response:
    message = pb.RepositoryModelUnloadRequest(model_name=request.match_info["name"])
    _repository_parameters(await _json_body(request), message.parameters)
    await services(request).triton.call("RepositoryModelUnload", message)
    return web.Response(status=200)


def _unsupported(what: str):
    async def handler(request: web.Request) -> web.Response:
        raise Unsupported(f"{what} is not supported by netc")

    return handler


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v2", server_metadata)
    router.add_get("/v2/health/live", live)
    router.add_get("/v2/health/ready", ready)
    router.add_get("/v2/models/stats", model_stats)
    for base in VERSIONED:
        router.add_get(base, model_metadata)
        router.add_get(f"{base}/ready", model_ready)
        router.add_get(f"{base}/config", model_config)
        router.add_get(f"{base}/stats", model_stats)
        router.add_post(f"{base}/infer", infer)
        router.add_route("*", f"{base}/trace/setting", _unsupported("tracing"))
    router.add_post("/v2/repository/index", repository_index)
    router.add_post("/v2/repository/models/{name}/load", load)
    router.add_post("/v2/repository/models/{name}/unload", unload)
    for memory, what in (("system", "system shared memory"), ("cuda", "CUDA shared memory")):
        router.add_route("*", f"/v2/{memory}sharedmemory/{{tail:.*}}", _unsupported(what))
    router.add_route("*", "/v2/trace/setting", _unsupported("tracing"))
    router.add_route("*", "/v2/logging", _unsupported("changing log settings"))

"""`inference.GRPCInferenceService`: Triton's gRPC API (KServe v2 plus Triton's extensions).

Wire-compatible with Triton, so the stock `tritonclient.grpc` works unchanged
(tests/serving/test_protos.py proves the protos match, test_triton_service.py
drives every call with the real client). Served: health and metadata,
ModelInfer and ModelStreamInfer (with the classification extension),
ModelConfig, ModelStatistics and the model repository calls. Shared memory,
trace and log settings answer UNIMPLEMENTED.

Every request-level error becomes a gRPC status through `serving.errors.abort`
(`failure` for a stream's answers); an unexpected exception is INTERNAL and
logged, and the server goes on serving.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.message import DecodeError

import netc
from netc.protos.generated import grpc_service_pb2 as pb
from netc.protos.generated import grpc_service_pb2_grpc as pb_grpc
from netc.protos.generated import model_config_pb2 as config_pb
from netc.serving import triton_config
from netc.serving.errors import (
    InvalidRequest,
    ServingError,
    Unsupported,
    abort,
    failure,
    status_of,
)
from netc.serving.model import ServedModel
from netc.serving.repository import ModelRepository
from netc.serving.stats import Duration, ModelStats
from netc.serving.tensors import add_output, classify

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
EXTENSIONS = ["classification", "model_configuration", "model_repository", "statistics"]
STREAM_IN_FLIGHT = 64  # requests of one ModelStreamInfer stream running ahead of its answers
log = logging.getLogger("netc.serving")
T = TypeVar("T")


class _Handlers:
    """Stands in for the server while the generated code builds the method handlers, so
    ModelInfer's can be swapped for one that takes and returns bytes."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.handlers = dict(handlers)


def add_to_server(server: grpc.aio.Server, repository: ModelRepository) -> list[str]:
    """Register the service on `server`; returns its full name (for health and reflection)."""
    servicer = TritonService(repository)
    built = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, built)
    handlers = built.handlers
    # No deserializer: ModelInfer parses the request itself, so its stats' decoding time
    # (compute_input) includes the parse, as Triton's does.
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    return [SERVICE_NAME]


def _unary(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Turn exceptions escaping a unary handler into an aborted call."""
    call = method.__name__

    @functools.wraps(method)
    async def handler(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except Exception as exc:  # every failure becomes a status
            error = exc
        await abort(context, error, call)

    return handler


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def _statistics(model: ServedModel) -> pb.ModelStatistics:
    stats: ModelStats = model.stats
    return pb.ModelStatistics(
        name=model.name,
        version=model.version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=size, compute_infer=_duration(d))
            for size, d in sorted(stats.batch_sizes.items())
        ],
    )


def model_config(model: ServedModel) -> config_pb.ModelConfig:
    """Triton's model configuration of a loaded version: the same message `netc export
    --repository` writes as config.pbtxt (serving/triton_config.py), with where it runs."""
    groups = config_pb.ModelInstanceGroup
    gpu = "CUDAExecutionProvider" in model.session.get_providers()
    kind = groups.KIND_GPU if gpu else groups.KIND_CPU
    return triton_config.model_config(model.info, model.config, kind=kind)


def _tensor_metadata(spec, batched: bool) -> pb.ModelMetadataResponse.TensorMetadata:
    shape = [-1, *spec.dims] if batched else list(spec.dims)
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=shape
    )


def _timeout(request: pb.ModelInferRequest, remaining: float | None) -> float | None:
    """Seconds left: the call's deadline (`remaining`: gRPC's time_remaining(), None for
    HTTP) or the request's `timeout` parameter (µs), whichever is sooner, if any."""
    limits = []
    if remaining is not None:
        limits.append(remaining)
    if request.parameters and "timeout" in request.parameters:
        micros = request.parameters["timeout"].int64_param
        if micros > 0:
            limits.append(micros / 1e6)
    return min(limits) if limits else None


def _requested_outputs(request: pb.ModelInferRequest, model: ServedModel) -> list[tuple[str, int]]:
    """(output name, classification k or 0), in request order, or every output."""
    if not request.outputs:
        return model.every_output
    known = model.output_names
    chosen: list[tuple[str, int]] = []
    for output in request.outputs:
        name = output.name
        if name not in known:
            raise InvalidRequest(
                f"model '{model.name}': unknown output '{name}'; the model's "
                f"outputs are {', '.join(known)}"
            )
        if any(name == seen for seen, _ in chosen):
            raise InvalidRequest(f"output '{name}' is requested more than once")
        if "shared_memory_region" in output.parameters:
            raise Unsupported(
                f"output '{name}': shared-memory outputs are not supported by this server"
            )
        k = 0
        if "classification" in output.parameters:
            k = output.parameters["classification"].int64_param
            if k < 1:
                raise InvalidRequest(
                    f"output '{name}': classification count must be at least 1, found {k}"
                )
            if _datatype(model, name) == "BYTES":
                raise InvalidRequest(
                    f"output '{name}': classification ranks numbers, and this output is "
                    "BYTES (text); request it without class_count"
                )
        chosen.append((name, k))
    return chosen


def _datatype(model: ServedModel, output: str) -> str:
    return next(spec.datatype for spec in model.info.outputs if spec.name == output)


def _response(
    model: ServedModel, request_id: str, wanted: list[tuple[str, int]], results: dict
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=model.name, model_version=model.version, id=request_id
    )
    batched = model.info.max_batch_size > 0
    for name, k in wanted:
        array = results[name]
        if k:
            array = classify(array, k, model.info.labels, batched)
        add_output(response, name, array)
    return response


def _serialize(response: pb.ModelInferResponse) -> bytes:
    return response.SerializeToString()


def _in_stream(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    return pb.ModelStreamInferResponse(infer_response=response)


def _check_parameters(request: pb.ModelInferRequest) -> None:
    if request.parameters and "sequence_id" in request.parameters:
        raise InvalidRequest(
            f"model '{request.model_name}' is not a sequence model; the "
            "request must not set sequence_id"
        )


class TritonService(pb_grpc.GRPCInferenceServiceServicer):
    """The servicer; one per server, sharing the server's model repository."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def call(self, name: str, request):
        """The answer of the unary handler `name` (ServerMetadata, ModelConfig, ...) to
        `request`, for another front end (the REST port, serving/http/): the same code
        without gRPC's context, so a failure is the exception it raised."""
        return await getattr(type(self), name).__wrapped__(self, request, None)

    # Health and metadata.

    @_unary
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_unary
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.repository.ready())

    @_unary
    async def ModelReady(self, request, context):
        try:
            self.repository.get(request.name, request.version)
        except ServingError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_unary
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(
            name="netc", version=netc.__version__, extensions=EXTENSIONS
        )

    @_unary
    async def ModelMetadata(self, request, context):
        model = self.repository.get(request.name, request.version)
        info, batched = model.info, model.info.max_batch_size > 0
        versions = (
            [request.version]
            if request.version
            else sorted(self.repository.models.get(info.name, {}), key=int)
        )
        return pb.ModelMetadataResponse(
            name=info.name,
            versions=versions,
            platform=info.platform,
            inputs=[_tensor_metadata(t, batched) for t in info.inputs],
            outputs=[_tensor_metadata(t, batched) for t in info.outputs],
        )

    @_unary
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(
            config=model_config(self.repository.get(request.name, request.version))
        )

    @_unary
    async def ModelStatistics(self, request, context):
        if not request.name:
            models = [m for versions in self.repository.models.values() for m in versions.values()]
        elif request.version:
            models = [self.repository.get(request.name, request.version)]
        else:
            self.repository.get(request.name)  # NOT_FOUND / UNAVAILABLE with its reason
            models = list(self.repository.models[request.name].values())
        models.sort(key=lambda m: (m.name, int(m.version)))
        return pb.ModelStatisticsResponse(model_stats=[_statistics(m) for m in models])

    # Inference.

    async def _infer(
        self,
        request: pb.ModelInferRequest,
        remaining: float | None,
        encode: Callable[[pb.ModelInferResponse], T],
        start: int | None = None,
    ) -> T:
        """Check, queue and run one request (ModelInfer's, each of ModelStreamInfer's and
        the REST port's, serving/http/): `remaining` is the call's deadline in seconds
        (None: no deadline). Once the model is known, the request's times from `start`
        (when it arrived) to its answer `encode`d go to the model's stats, its failure's
        status too."""
        start = time.perf_counter_ns() if start is None else start
        model = self.repository.get(request.model_name, request.model_version)
        times = model.stats.begin(start)
        try:
            await model.admit()  # a full queue refuses before the request is decoded
            _check_parameters(request)
            wanted = _requested_outputs(request, model)
            timeout = _timeout(request, remaining)
            results = await model.queue(model.checked(request), timeout=timeout, times=times)
            times.ran = time.perf_counter_ns()  # encoding starts: compute_output
            answer = encode(_response(model, request.id, wanted, results))
        except BaseException as exc:  # a cancelled call too
            model.stats.failed(times, status_of(exc).name)
            raise
        model.stats.succeeded(times)
        return answer

    async def ModelInfer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Registered without (de)serializers, so the time to parse the request counts as
        its decoding (compute_input) in the model's stats."""
        start = time.perf_counter_ns()
        try:
            try:
                request = pb.ModelInferRequest.FromString(data)
            except DecodeError as exc:
                raise InvalidRequest(
                    f"the request is not a valid inference.ModelInferRequest ({exc})"
                ) from None
            return await self._infer(request, context.time_remaining(), _serialize, start)
        except Exception as exc:  # every failure becomes a status
            error = exc
        await abort(context, error, "ModelInfer")

    async def _stream_answer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStreamInferResponse:
        try:
            return await self._infer(request, context.time_remaining(), _in_stream)
        except Exception as exc:  # an error answers this request, not the stream
            code, message = failure(exc, "ModelStreamInfer")
            return pb.ModelStreamInferResponse(
                error_message=f"[{code.name}] {message}",
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ):
        """Requests run concurrently (so they batch); answers go back in request order. At
        most `STREAM_IN_FLIGHT` requests of a stream are read ahead of its answers, so a
        client that stops reading is held back by gRPC's flow control, not buffered."""
        answers: asyncio.Queue[asyncio.Task | BaseException | None] = asyncio.Queue()
        room = asyncio.Semaphore(STREAM_IN_FLIGHT)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await room.acquire()
                    answers.put_nowait(asyncio.create_task(self._stream_answer(request, context)))
            except Exception as exc:  # an undecodable message: say so, do not just end
                answers.put_nowait(exc)
            finally:
                answers.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await answers.get()) is not None:
                if isinstance(item, BaseException):
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"ModelStreamInfer: a message could not be read as a "
                        f"ModelInferRequest ({type(item).__name__}: {item})",
                    )
                    raise AssertionError("gRPC's context.abort returned")  # it raises AbortError
                answer = await item
                room.release()
                yield answer
        finally:
            reader.cancel()
            while not answers.empty():
                if isinstance(item := answers.get_nowait(), asyncio.Task):
                    item.cancel()

    # The model repository.

    @_unary
    async def RepositoryIndex(self, request, context):
        entries = [e for e in self.repository.index() if not request.ready or e.state == "READY"]
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
        )

    @_unary
    async def RepositoryModelLoad(self, request, context):
        """Load or reload a model of the repository; a `config` parameter (a ModelConfig in
        JSON, as Triton takes it) stands in for its config.yaml in this load. A load that
        fails answers with the reason, even where the versions already loaded serve on."""
        name = request.model_name
        files = sorted(key for key in request.parameters if key.startswith("file:"))
        if files:
            raise Unsupported(
                f"model '{name}': load parameters {', '.join(files)} are not supported; "
                "netc loads model files from the repository on disk "
                "(REPO/<model>/<version>/model.onnx)"
            )
        config = None
        if "config" in request.parameters:
            text = request.parameters["config"].string_param
            config, ignored = triton_config.from_json(text, self.repository.folder(name))
            if ignored:
                log.warning(
                    "warning: model %s: the load's config sets Triton settings netc does not "
                    "use, ignored: %s",
                    name,
                    ", ".join(ignored),
                )
        await self.repository.load(name, config)
        return pb.RepositoryModelLoadResponse()

    @_unary
    async def RepositoryModelUnload(self, request, context):
        await self.repository.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # Triton features netc does not serve.

    async def _unsupported(self, what: str, context: grpc.aio.ServicerContext):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by netc")

    async def SystemSharedMemoryStatus(self, request, context):
        await self._unsupported("system shared memory", context)

    async def SystemSharedMemoryRegister(self, request, context):
        await self._unsupported("system shared memory", context)

    async def SystemSharedMemoryUnregister(self, request, context):
        await self._unsupported("system shared memory", context)

    async def CudaSharedMemoryStatus(self, request, context):
        await self._unsupported("CUDA shared memory", context)

    async def CudaSharedMemoryRegister(self, request, context):
        await self._unsupported("CUDA shared memory", context)

    async def CudaSharedMemoryUnregister(self, request, context):
        await self._unsupported("CUDA shared memory", context)

    async def TraceSetting(self, request, context):
        await self._unsupported("tracing", context)

    async def LogSettings(self, request, context):
        await self._unsupported("changing log settings", context)

"""Serving errors and the one place that maps them to gRPC status codes.

Every request-level mistake raises a `ServingError` whose message names the
model, tensor and what was expected. Every servicer answers whatever its call
raised through `abort` (or `failure`, where the answer is a message rather than
an aborted call): a user error's status code and message as written, anything
else INTERNAL and logged as our bug, and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NoReturn

import grpc

from netc.errors import UserError

log = logging.getLogger("netc.serving")


class ServingError(UserError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidRequest(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class ModelUnavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class QueueFull(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class RequestCancelled(ServingError):
    code = grpc.StatusCode.CANCELLED


class Unsupported(ServingError):
    code = grpc.StatusCode.UNIMPLEMENTED


class ModelFailed(ServingError):
    """onnxruntime could not run the model on a request (a Cast of text that is not a
    number): INTERNAL, as Triton answers, but the model's trouble, not netc's bug."""

    code = grpc.StatusCode.INTERNAL


def clip(text: str, most: int = 200) -> str:
    """A client's string inside an error message, cut short: a status message must fit
    gRPC's 8 KiB trailer, and a name of megabytes would make the client see nothing."""
    return text if len(text) <= most else f"{text[:most]}… ({len(text)} characters)"


MAX_MESSAGE = 4000  # characters of a status message; gRPC drops trailers over 8 KiB


def status_message(text: str) -> str:
    """A status message as sent: whole when it fits, else cut, so the client still sees
    what was wrong."""
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}… (message cut)"


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status a request that raised `error` ends with (a cancelled call: CANCELLED)."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(error, UserError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.INTERNAL


def failure(error: BaseException, call: str) -> tuple[grpc.StatusCode, str]:
    """The status and message a client receives for `error`, raised while serving `call`
    (an RPC's name). Anything but a user error is logged with its traceback."""
    if isinstance(error, UserError):
        return status_of(error), status_message(str(error))
    log.error("internal error in %s", call, exc_info=error)
    text = f"internal error in {call}: {type(error).__name__}: {error}"
    return grpc.StatusCode.INTERNAL, status_message(text)


async def abort(context: grpc.aio.ServicerContext, error: BaseException, call: str) -> NoReturn:
    """End the call with `failure(error, call)`."""
    await context.abort(*failure(error, call))
    raise AssertionError("gRPC's context.abort returned")  # it raises AbortError

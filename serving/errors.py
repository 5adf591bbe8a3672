"""Serving errors and the one place that maps them to gRPC status codes.

Every request-level mistake raises a `ServingError` whose message names the
model, tensor and what was expected; servicers catch it and abort the call
with `status_code(error)`. Anything else is our bug: INTERNAL, and the
server keeps serving.
"""

from __future__ import annotations

import grpc

from netc.errors import UserError


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


def status_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status for an error raised while serving a request."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(error, UserError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def clip(text: str, most: int = 200) -> str:
    """A client's string inside an error message, cut short: a status message must fit
    gRPC's 8 KiB trailer, and a name of megabytes would make the client see nothing."""
    return text if len(text) <= most else f"{text[:most]}… ({len(text)} characters)"


MAX_MESSAGE = 4000  # characters of a status message; gRPC drops trailers over 8 KiB


def status_message(text: str) -> str:
    """A status message as sent: whole when it fits, else cut, so the client still sees
    what was wrong."""
    return text if len(text) <= MAX_MESSAGE else f"{text[:MAX_MESSAGE]}… (message cut)"

"""A small Python client for netc's vision service.

```python
with VisionClient("localhost:8001") as client:
    for label, index, score in client.classify(["cat.png"], "resnet18")[0]:
        print(label, score)
    mask, labels, scores = client.segment("street.jpg", "fcn8s", scores=True)
```

Every failure is a `netc.errors.UserError` saying which server answered
what, e.g. "server at localhost:8001: NOT_FOUND: Request for unknown model: 'foo' is
not found ...";
`RequestFailed.code` holds the gRPC status.

A server with TLS and tokens (README.md, Security):
`VisionClient("host:8001", tls_ca="ca.crt", token_file="token.txt")`; mutual TLS adds
`tls_cert=` and `tls_key=`; without `token` or `token_file` the environment variable
NETC_TOKEN gives the token, if set.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import grpc
import numpy as np
from PIL import Image

from netc.errors import UserError
from netc.protos.generated import (
    grpc_service_pb2,
    grpc_service_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from netc.serving.auth import read_tokens
from netc.serving.tls import channel_credentials

ImageLike = Union[str, Path, bytes, np.ndarray]
"""A file path, PNG/JPEG file contents, or pixels: (H, W), (H, W, C) as from
`np.asarray(PIL.Image)`, or (C, H, W) when the last dimension is not 1, 3 or 4;
uint8 in 0..255 or floats in 0..1."""

MAX_TOP_K = 2**31 - 1  # the vision protocol's int32 (ClassifyRequest.top_k)
TOKEN_ENV = "NETC_TOKEN"

_UNREACHABLE = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "socket closed",
    "connection reset",
    "handshake failed",
)


class RequestFailed(UserError):
    """The server answered a call with an error status (`code`)."""

    def __init__(self, message: str, code: grpc.StatusCode | None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    task: str
    labels: tuple[str, ...]
    input_shape: tuple[int, ...]  # [C, H, W]; -1 where open
    precision: str = "fp32"  # fp32, fp16 or int8


@dataclass(frozen=True)
class ModelState:
    name: str
    version: str  # "" when no version is loaded
    state: str  # READY, UNAVAILABLE, LOADING
    reason: str  # why it is not READY (a load error, "unloaded"), or ""


def image_message(image: ImageLike) -> vision_pb2.Image:
    """A vision `Image` from a path, encoded bytes or a pixel array."""
    if isinstance(image, (str, Path)):
        try:
            return vision_pb2.Image(encoded=Path(image).read_bytes())
        except OSError as exc:
            raise UserError(f"cannot read {image}: {exc.strerror or exc}") from None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return vision_pb2.Image(encoded=bytes(image))
    if isinstance(image, np.ndarray):
        return vision_pb2.Image(tensor=_tensor(image))
    raise UserError(
        f"cannot send a {type(image).__name__} as an image: expected a "
        "path, PNG/JPEG bytes or a numpy array"
    )


def _tensor(array: np.ndarray) -> vision_pb2.Tensor:
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        layout = "HWC"
    elif array.ndim in (2, 3):
        layout = "CHW"
    else:
        raise UserError(
            f"an image array must be (H, W), (H, W, C) or (C, H, W), found shape {array.shape}"
        )
    if array.dtype == np.uint8:
        datatype, data = "UINT8", array
    elif np.issubdtype(array.dtype, np.floating):
        datatype, data = "FP32", array.astype("<f4")
    else:
        raise UserError(f"image arrays must be uint8 (0..255) or float (0..1), found {array.dtype}")
    return vision_pb2.Tensor(
        shape=list(array.shape),
        layout=layout,
        datatype=datatype,
        data=np.ascontiguousarray(data).tobytes(),
    )


def client_token(token: str | None = None, token_file: str | Path | None = None) -> str | None:
    """The bearer token to send: `token`, else the first token of `token_file` (a
    UserError naming it if it cannot be read or holds none), else $NETC_TOKEN, else None."""
    if token:
        return token
    if token_file is not None:
        return read_tokens(Path(token_file), "--token-file")[0]
    return os.environ.get(TOKEN_ENV) or None


class VisionClient:
    """Calls a netc server's vision service; use as a context manager or `close()`.

    TLS is on with `tls=True` (the system's root certificates) or a `tls_ca` file;
    `tls_cert` and `tls_key` present a client certificate (mutual TLS). `token`,
    `token_file` or $NETC_TOKEN (see `client_token`) is sent as `authorization: Bearer`.
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        max_message_mb: int = 128,
        timeout: float | None = 60.0,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
    ) -> None:
        self.url, self.timeout = url, timeout
        bearer = client_token(token, token_file)
        self.metadata = (("authorization", f"Bearer {bearer}"),) if bearer else None
        limit = max_message_mb * 2**20
        options = [
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
        ]
        self.tls = tls or any(f is not None for f in (tls_ca, tls_cert, tls_key))
        self.client_certificate = tls_cert is not None
        if self.tls:
            credentials = channel_credentials(
                *(None if f is None else Path(f) for f in (tls_ca, tls_cert, tls_key))
            )
            self.channel = grpc.secure_channel(url, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(url, options=options)
        self.stub = vision_pb2_grpc.VisionServiceStub(self.channel)
        self.triton = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def __enter__(self) -> VisionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> RequestFailed:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and any(
            text in details.lower() for text in _UNREACHABLE
        ):
            return RequestFailed(
                f"cannot reach a netc server at {self.url} ({details}){self._tls_hint(details)}",
                code,
            )
        if code == grpc.StatusCode.UNIMPLEMENTED and "method not found" in details.lower():
            return RequestFailed(
                f"the server at {self.url} does not offer netc's vision service ({details})",
                code,
            )
        name = code.name if code is not None else "UNKNOWN"
        return RequestFailed(f"server at {self.url}: {name}: {details}", code)

    def _tls_hint(self, details: str) -> str:
        """What to check when a connection failed in a TLS handshake, or closed at once
        (as a TLS server does to a plain-text client, and a mutual-TLS server to a client
        without a certificate it trusts): "" or '; ...'."""
        text = details.lower()
        if "wrong_version_number" in text:
            return "; the server does not speak TLS: leave out --tls and --tls-ca"
        if "certificate" in text:
            return "; --tls-ca must be the CA that signed the server's certificate"
        if "socket closed" not in text and "connection reset" not in text:
            return ""
        if not self.tls:
            return "; if the server uses TLS, give its CA with --tls-ca"
        if not self.client_certificate:
            return "; if the server asks for client certificates, give --tls-cert and --tls-key"
        return "; if the server asks for client certificates, its CA must have signed --tls-cert"

    def classify(
        self, images: list[ImageLike], model: str, top_k: int = 5, *, version: str = ""
    ) -> list[list[tuple[str, int, float]]]:
        """Per image, the top_k (label, class index, probability), best first."""
        request = vision_pb2.ClassifyRequest(
            model=model, version=version, top_k=top_k, images=[image_message(i) for i in images]
        )
        response = self._call(self.stub.Classify, request)
        return [[(x.label, x.index, x.score) for x in result.labels] for result in response.results]

    def segment(
        self, image: ImageLike, model: str, scores: bool = False, *, version: str = ""
    ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
        """(class-index mask uint8 (H, W), class names, probabilities (K, H, W) or None)."""
        request = vision_pb2.SegmentRequest(
            model=model, version=version, image=image_message(image), return_scores=scores
        )
        response = self._call(self.stub.Segment, request)
        mask = np.asarray(Image.open(io.BytesIO(response.mask_png)))
        probabilities = None
        if response.HasField("scores"):
            t = response.scores
            probabilities = np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape))
        return mask, list(response.labels), probabilities

    def models(self) -> list[ModelEntry]:
        """The models (and versions) the server can classify or segment with."""
        response = self._call(self.stub.ListModels, vision_pb2.ListModelsRequest())
        return [
            ModelEntry(
                m.name, m.version, m.task, tuple(m.labels), tuple(m.input_shape), m.precision
            )
            for m in response.models
        ]

    def states(self) -> list[ModelState]:
        """Every model of the server's repository with its state and the reason for it
        (Triton's RepositoryIndex): `models` lists only those ready to serve, this says
        why one is not, e.g. its config.yaml has a mistake."""
        index = self._call(self.triton.RepositoryIndex, grpc_service_pb2.RepositoryIndexRequest())
        return [ModelState(m.name, m.version, m.state, m.reason) for m in index.models]

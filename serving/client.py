"""A small Python client for netc's vision service.

```python
with VisionClient("localhost:8001") as client:
    for label, index, score in client.classify(["cat.png"], "resnet18")[0]:
        print(label, score)
    mask, labels, scores = client.segment("street.jpg", "fcn8s", scores=True)
```

Every failure is a `netc.errors.UserError` saying which server answered
what, e.g. "server at localhost:8001: NOT_FOUND: unknown model 'foo' ...";
`RequestFailed.code` holds the gRPC status.
"""

from __future__ import annotations

import io
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

ImageLike = Union[str, Path, bytes, np.ndarray]
"""A file path, PNG/JPEG file contents, or pixels: (H, W), (H, W, C) as from
`np.asarray(PIL.Image)`, or (C, H, W) when the last dimension is not 1, 3 or 4;
uint8 in 0..255 or floats in 0..1."""

MAX_TOP_K = 2**31 - 1  # the vision protocol's int32 (ClassifyRequest.top_k)

_UNREACHABLE = (
    "failed to connect",
    "connection refused",
    "dns resolution failed",
    "name resolution",
    "socket closed",
    "connection reset",
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


class VisionClient:
    """Calls a netc server's vision service; use as a context manager or `close()`."""

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        max_message_mb: int = 128,
        timeout: float | None = 60.0,
    ) -> None:
        self.url, self.timeout = url, timeout
        limit = max_message_mb * 2**20
        self.channel = grpc.insecure_channel(
            url,
            options=[
                ("grpc.max_send_message_length", limit),
                ("grpc.max_receive_message_length", limit),
            ],
        )
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
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc: grpc.RpcError) -> RequestFailed:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNAVAILABLE and any(
            text in details.lower() for text in _UNREACHABLE
        ):
            return RequestFailed(f"cannot reach a netc server at {self.url} ({details})", code)
        if code == grpc.StatusCode.UNIMPLEMENTED and "method not found" in details.lower():
            return RequestFailed(
                f"the server at {self.url} does not offer netc's vision service ({details})",
                code,
            )
        name = code.name if code is not None else "UNKNOWN"
        return RequestFailed(f"server at {self.url}: {name}: {details}", code)

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

"""netc's vision service (`netc.vision.VisionService`): pictures in, labels and masks out.

Classify runs each picture of a request as its own batch-1 request, all at
once, so the model's dynamic batcher merges them (and pictures of other
calls). Segment maps the model's score map back onto the picture's own size
(`images.scores.dense_scores`). Decoding and postprocessing run in worker threads,
never on the event loop. Every failure is answered through
`serving.errors.abort`; the server keeps serving.

Which RPC fits a model follows its first output: [K] per picture is a
classifier, [K, h, w] a dense predictor (segmentation, or a classifier made
fully convolutional).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

import grpc
import numpy as np

from netc.errors import UserError
from netc.model_card import size_rule
from netc.protos.generated import vision_pb2, vision_pb2_grpc
from netc.serving.errors import InvalidRequest, ModelUnavailable, Unsupported, abort
from netc.serving.images.decode import decode, pixel_count, pixel_limit
from netc.serving.images.masks import encode_png
from netc.serving.images.prepare import ImageInput, image_input, prepare
from netc.serving.images.scores import dense_scores, probabilities, score_classes
from netc.serving.model import ServedModel
from netc.serving.repository import ModelRepository

SERVICE = "netc.vision.VisionService"
DEFAULT_TOP_K = 5
MAX_CLASSES_IN_MASK = 256  # the mask is an 8-bit PNG
MESSAGE_SLACK = 1 << 16  # an answer's labels, counts and framing besides scores and mask


@dataclass(frozen=True)
class VisionModel:
    """What the vision service needs to know about a served model, worked out once."""

    model: ServedModel
    image: ImageInput
    output: str
    task: str  # classification | segmentation | the model's own task otherwise
    rules: tuple  # output H and W as functions of the input's (model_card.size_rule)
    classes: int | None  # K of a [K, h, w] output when the model fixes it

    def labels(self, classes: int) -> list[str]:
        """Class index → name; the index itself where the model has no name for it."""
        known = list(self.model.info.labels or ())
        return [known[i] if i < len(known) else str(i) for i in range(classes)]


def vision_task(info) -> str:
    """classification for a [K] output, segmentation for [K, h, w], else the model's task."""
    spec = info.outputs[0]
    dims = spec.dims if info.max_batch_size else spec.dims[1:]
    if len(dims) == 3:
        return "segmentation"
    if len(dims) == 1 and info.task in ("classification", "unknown"):
        return "classification"
    return info.task


def _describe(model: ServedModel) -> VisionModel:
    info = model.info
    spec = info.outputs[0]
    dims = spec.dims if info.max_batch_size else spec.dims[1:]
    shape = next(o.shape for o in model.session.get_outputs() if o.name == spec.name)[-2:]
    variables = model.session.get_inputs()[0].shape[-2:]
    return VisionModel(
        model=model,
        image=image_input(info),
        output=spec.name,
        task=vision_task(info),
        rules=tuple(map(size_rule, shape, variables)) if len(dims) == 3 else (None, None),
        classes=dims[0] if len(dims) == 3 and dims[0] > 0 else None,
    )


def _prepared_alike(a: ServedModel, b: ServedModel) -> bool:
    """Whether a picture prepared for one model is the input the other wants: the same
    tensors, the same netc metadata (preprocessing, strides) and output sizes. (Compares
    what `_describe` is made from; its results hold arrays and closures.)"""

    def made_from(model: ServedModel) -> tuple:
        info = model.info
        shapes = [output.shape for output in model.session.get_outputs()]
        return info.inputs, info.outputs, info.max_batch_size, info.metadata, shapes

    return made_from(a) == made_from(b)


class VisionServicer(vision_pb2_grpc.VisionServiceServicer):
    def __init__(
        self,
        repository: ModelRepository,
        *,
        max_pixels: int | None = None,
        max_message_bytes: int,
    ) -> None:
        self.repository = repository
        self.max_pixels = max_pixels  # None: images.decode.MAX_PIXELS at the time of the call
        self.max_message_bytes = max_message_bytes
        self._described: weakref.WeakKeyDictionary[ServedModel, VisionModel] = (
            weakref.WeakKeyDictionary()
        )

    # -- RPCs: each one catches everything and answers with a status code

    async def Classify(self, request, context):
        work = self.classify(request, context.time_remaining())
        return await self._answer(work, context, "Classify")

    async def Segment(self, request, context):
        return await self._answer(
            self.segment(request, context.time_remaining()), context, "Segment"
        )

    async def ListModels(self, request, context):
        return await self._answer(self.list_models(), context, "ListModels")

    async def _answer(self, work, context, call: str):
        try:
            return await work
        except Exception as exc:  # every failure becomes a status, never a crash
            error = exc
        await abort(context, error, call)

    # -- the work, shared with the REST port (serving/http/vision_routes.py): a request
    # message in, its answer out, a ServingError for a bad request; `remaining` is the
    # call's deadline in seconds (None: none)

    def _model(self, request, task: str) -> VisionModel:
        if not request.model:
            raise InvalidRequest("the request names no model (ListModels lists them)")
        model = self.repository.get(request.model, request.version)
        vision = self._described.get(model)
        if vision is None:
            vision = self._described[model] = _describe(model)
        if vision.task != task:
            rpc = {"classification": "Classify", "segmentation": "Segment"}.get(vision.task)
            hint = f"; use {rpc}" if rpc else ""
            raise InvalidRequest(
                f"model '{model.name}' is a {vision.task} model, not a {task} model{hint}"
            )
        return vision

    async def _prepare(self, image, vision: VisionModel, index: int | None = None):
        def work():
            decoded = decode(image, max_pixels=self.max_pixels)
            return prepare(decoded, vision.image, rules=vision.rules, max_pixels=self.max_pixels)

        try:
            return await asyncio.to_thread(work)
        except UserError as exc:
            if index is None:
                raise
            raise type(exc)(f"image {index}: {exc}") from None

    async def _run(
        self, vision: VisionModel, tensor: np.ndarray, request, remaining: float | None
    ) -> np.ndarray:
        inputs = {vision.image.name: tensor}
        try:
            outputs = vision.model.infer(inputs, timeout=remaining)
        except ModelUnavailable:
            # Reloaded while the picture was decoding: the new version takes the request if
            # it wants the same input prepared the same way.
            current = self._model(request, vision.task)
            if current.model is vision.model or not _prepared_alike(current.model, vision.model):
                raise
            vision = current
            outputs = vision.model.infer(inputs, timeout=remaining)
        return (await outputs)[vision.output]

    async def classify(
        self, request: vision_pb2.ClassifyRequest, remaining: float | None = None
    ) -> vision_pb2.ClassifyResponse:
        vision = self._model(request, "classification")
        if request.top_k < 0:
            raise InvalidRequest(f"top_k must be >= 0 (0: {DEFAULT_TOP_K}), found {request.top_k}")
        if not request.images:
            raise InvalidRequest("the request has no images")
        most = vision.model.config.max_queue_size
        if len(request.images) > most:  # each image queues: more could never all fit
            raise InvalidRequest(
                f"the request has {len(request.images)} images; model '{vision.model.name}' "
                f"takes at most {most} at a time (its max_queue_size); send them in parts"
            )
        if len(request.images) > 1:  # one request's pictures share the budget
            total = await asyncio.to_thread(
                lambda: sum(pixel_count(image) for image in request.images)
            )
            limit = pixel_limit(self.max_pixels)
            if total > limit:
                raise InvalidRequest(
                    f"the request's {len(request.images)} images hold {total / 1e6:.1f} "
                    f"megapixels together; this server accepts at most {limit / 1e6:g} "
                    "megapixels a request (send fewer or smaller images)"
                )
        prepared = await asyncio.gather(
            *(self._prepare(image, vision, i) for i, image in enumerate(request.images))
        )
        outputs = await asyncio.gather(
            *(self._run(vision, p.tensor, request, remaining) for p in prepared)
        )
        response = vision_pb2.ClassifyResponse(
            model=vision.model.name, version=vision.model.version
        )
        for output in outputs:
            scores = probabilities(output.reshape(-1))
            labels = vision.labels(scores.size)
            top_k = min(request.top_k or DEFAULT_TOP_K, scores.size)
            best = np.argsort(-scores, kind="stable")[:top_k]
            response.results.add().labels.extend(
                vision_pb2.Label(index=int(i), label=labels[i], score=float(scores[i]))
                for i in best
            )
        return response

    async def segment(
        self, request: vision_pb2.SegmentRequest, remaining: float | None = None
    ) -> vision_pb2.SegmentResponse:
        vision = self._model(request, "segmentation")
        if not request.HasField("image"):
            raise InvalidRequest("the request has no image")
        known = vision.classes and score_classes(vision.classes)  # checked before any work
        if known:
            self._check_mask_holds(vision, known)
        prepared = await self._prepare(request.image, vision)
        if request.return_scores and known:
            self._check_scores_fit(known, prepared.original)
        output = await self._run(vision, prepared.tensor, request, remaining)
        classes = score_classes(output.shape[1])
        self._check_mask_holds(vision, classes)
        if request.return_scores:
            self._check_scores_fit(classes, prepared.original)
        info = vision.model.info

        def postprocess():
            mask, scores = dense_scores(
                output[0],
                prepared,
                stride=info.output_stride,
                offset=info.output_offset,
                want_scores=request.return_scores,
            )
            counts = np.bincount(mask.ravel(), minlength=classes)
            if scores is not None:  # hundreds of MiB: built here, off the event loop
                scores = vision_pb2.Tensor(
                    shape=list(scores.shape),
                    layout="CHW",
                    datatype="FP32",
                    data=scores.astype("<f4").tobytes(),
                )
            return encode_png(mask), scores, counts

        png, scores, counts = await asyncio.to_thread(postprocess)
        height, width = prepared.original
        response = vision_pb2.SegmentResponse(
            model=vision.model.name,
            version=vision.model.version,
            mask_png=png,
            height=height,
            width=width,
            labels=vision.labels(classes),
            pixel_counts=[int(c) for c in counts],
        )
        if scores is not None:
            response.scores.CopyFrom(scores)
        return response

    @staticmethod
    def _check_mask_holds(vision: VisionModel, classes: int) -> None:
        if classes > MAX_CLASSES_IN_MASK:
            raise Unsupported(
                f"model '{vision.model.name}' has {classes} classes; "
                f"masks hold at most {MAX_CLASSES_IN_MASK}"
            )

    def _check_scores_fit(self, classes: int, size: tuple[int, int]) -> None:
        """Scores for every class at every pixel must fit in one answer, with the mask."""
        height, width = size
        needed = 4 * classes * height * width + height * width + MESSAGE_SLACK
        if needed > self.max_message_bytes:
            raise InvalidRequest(
                f"return_scores: {classes} class scores for a {width}x{height} image take "
                f"{4 * classes * height * width / 2**20:.0f} MiB, over this server's "
                f"{self.max_message_bytes / 2**20:g} MiB message limit; ask for the mask "
                "alone or send a smaller image"
            )

    async def list_models(self) -> vision_pb2.ListModelsResponse:
        response = vision_pb2.ListModelsResponse()
        for entry in self.repository.index():
            if entry.state != "READY":
                continue
            info = self.repository.get(entry.name, entry.version).info
            spec = info.inputs[0] if info.inputs else None
            dims = [] if spec is None else list(spec.dims if info.max_batch_size else spec.dims[1:])
            response.models.add(
                name=info.name,
                version=info.version,
                task=vision_task(info),
                labels=list(info.labels or ()),
                input_shape=dims,
                precision=info.precision,
            )
        return response


def add_to_server(
    server: grpc.aio.Server,
    repository: ModelRepository,
    *,
    max_image_pixels: int | None = None,
    max_message_bytes: int,
) -> list[str]:
    servicer = VisionServicer(
        repository, max_pixels=max_image_pixels, max_message_bytes=max_message_bytes
    )
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, server)
    return [SERVICE]

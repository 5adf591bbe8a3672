"""netc's vision service over HTTP: pictures in, labels and masks out.

    GET  /v2/vision/models                                     served models, their tasks
    POST /v2/vision/models/{name}[/versions/{v}]/classify      ?top_k=N (default 5)
    POST /v2/vision/models/{name}[/versions/{v}]/segment       the mask as a PNG
The body is the picture's file (PNG or JPEG), or multipart/form-data whose file
parts are pictures (several for classify, one for segment). The work is the gRPC
service's (`VisionServicer.classify` / `segment`: decoding off the event loop, the
model's batcher, the pixel limits); this module only reads and writes HTTP.
Segment answers the 8-bit PNG of class indices, the picture's size; with
`Accept: application/json` it answers the labels, pixel counts and the PNG in base64.
"""

from __future__ import annotations

import base64

from aiohttp import web

from netc.protos.generated import vision_pb2
from netc.serving.errors import InvalidRequest, clip
from netc.serving.http.app import json_response, read_body, services

VERSIONED = ("/v2/vision/models/{name}", "/v2/vision/models/{name}/versions/{version}")


async def _pictures(request: web.Request) -> list[bytes]:
    """The pictures the request brings: its body, or the file parts of a form."""
    if not request.content_type.startswith("multipart/"):
        body = await read_body(request)
        return [body] if body else []
    form = await request.post()  # bounded by the app's client_max_size
    pictures = []
    for key, value in form.items():
        if not isinstance(value, web.FileField):
            raise InvalidRequest(
                f"form field '{clip(key)}' is not a file; send pictures as file parts "
                "(curl -F 'image=@picture.png')"
            )
        pictures.append(value.file.read())
    return pictures


def _top_k(request: web.Request) -> int:
    text = request.query.get("top_k", "0")
    try:
        return int(text)
    except ValueError:
        raise InvalidRequest(f"top_k must be an integer, found '{clip(text)}'") from None


async def list_models(request: web.Request) -> web.Response:
    answer = await services(request).vision.list_models()
    models = [
        {
            "name": m.name,
            "version": m.version,
            "task": m.task,
            "labels": list(m.labels),
            "input_shape": list(m.input_shape),
            "precision": m.precision,
        }
        for m in answer.models
    ]
    return json_response({"models": models})


async def classify(request: web.Request) -> web.Response:
    top_k = _top_k(request)  # a mistake said before the body is read
    message = vision_pb2.ClassifyRequest(
        model=request.match_info["name"],
        version=request.match_info.get("version", ""),
        top_k=top_k,
    )
    for picture in await _pictures(request):
        message.images.add(encoded=picture)
    if not message.images:
        raise InvalidRequest("the request brings no picture (send the file as the body)")
    answer = await services(request).vision.classify(message)
    results = [
        {"labels": [{"index": x.index, "label": x.label, "score": x.score} for x in r.labels]}
        for r in answer.results
    ]
    return json_response({"model": answer.model, "version": answer.version, "results": results})


async def segment(request: web.Request) -> web.Response:
    pictures = await _pictures(request)
    if len(pictures) != 1:
        raise InvalidRequest(
            f"segment takes one picture a request, found {len(pictures)} (send the file as "
            "the body)"
        )
    message = vision_pb2.SegmentRequest(
        model=request.match_info["name"],
        version=request.match_info.get("version", ""),
        image=vision_pb2.Image(encoded=pictures[0]),
    )
    answer = await services(request).vision.segment(message)
    if "application/json" not in request.headers.get("Accept", ""):
        return web.Response(body=answer.mask_png, content_type="image/png")
    return json_response(
        {
            "model": answer.model,
            "version": answer.version,
            "height": answer.height,
            "width": answer.width,
            "labels": list(answer.labels),
            "pixel_counts": list(answer.pixel_counts),
            "mask_png": base64.b64encode(answer.mask_png).decode("ascii"),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v2/vision/models", list_models)
    for base in VERSIONED:
        app.router.add_post(f"{base}/classify", classify)
        app.router.add_post(f"{base}/segment", segment)

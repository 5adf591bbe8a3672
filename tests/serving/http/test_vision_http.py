"""The vision service over HTTP: the same answers as over gRPC, the same refusals."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from PIL import Image

from netc.protos.generated import vision_pb2, vision_pb2_grpc

IMAGES = Path(__file__).resolve().parents[3] / "examples" / "images"


def _call(http_url, path, body=b"", headers=None, method="POST"):
    """(status, content type, body) of one request; errors are answers too."""
    request = urllib.request.Request(
        f"http://{http_url}{path}", data=body if method == "POST" else None, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers.get_content_type(), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get_content_type(), error.read()


def _grpc(http_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{http_server.port}")
    return channel, vision_pb2_grpc.VisionServiceStub(channel)


def test_classify_answers_what_grpc_answers(http_server, http_url):
    picture = (IMAGES / "three.png").read_bytes()
    status, kind, body = _call(
        http_url,
        "/v2/vision/models/lenet5/classify?top_k=3",
        picture,
        {"Content-Type": "image/png"},
    )
    assert (status, kind) == (200, "application/json")
    answer = json.loads(body)
    channel, stub = _grpc(http_server)
    with channel:
        expected = stub.Classify(
            vision_pb2.ClassifyRequest(
                model="lenet5", top_k=3, images=[vision_pb2.Image(encoded=picture)]
            )
        )
    assert (answer["model"], answer["version"]) == ("lenet5", "1")
    (result,) = answer["results"]
    assert [(x["index"], x["label"]) for x in result["labels"]] == [
        (x.index, x.label) for x in expected.results[0].labels
    ]
    assert [x["score"] for x in result["labels"]] == pytest.approx(
        [x.score for x in expected.results[0].labels], rel=1e-6
    )


def _multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_classify_takes_several_pictures_as_a_form(http_url):
    three, seven = ((IMAGES / f"{n}.png").read_bytes() for n in ("three", "seven"))
    body, kind = _multipart([("three.png", three), ("seven.png", seven)])
    status, _, answer = _call(
        http_url, "/v2/vision/models/lenet5/classify", body, {"Content-Type": kind}
    )
    assert status == 200, answer
    results = json.loads(answer)["results"]
    assert [len(r["labels"]) for r in results] == [5, 5]  # the default top_k
    single = json.loads(_call(http_url, "/v2/vision/models/lenet5/classify", seven)[2])
    assert results[1] == single["results"][0]  # in order, each picture its own answer


def test_segment_answers_the_mask_png_of_the_pictures_size(http_server, http_url):
    picture = (IMAGES / "scene.png").read_bytes()
    width, height = Image.open(io.BytesIO(picture)).size
    status, kind, png = _call(http_url, "/v2/vision/models/tinyseg/segment", picture)
    assert (status, kind) == (200, "image/png")
    mask = Image.open(io.BytesIO(png))
    assert (mask.size, mask.mode) == ((width, height), "L")
    channel, stub = _grpc(http_server)
    with channel:
        expected = stub.Segment(
            vision_pb2.SegmentRequest(model="tinyseg", image=vision_pb2.Image(encoded=picture))
        )
    assert png == expected.mask_png
    status, kind, body = _call(
        http_url, "/v2/vision/models/tinyseg/segment", picture, {"Accept": "application/json"}
    )
    answer = json.loads(body)
    assert (answer["width"], answer["height"]) == (width, height)
    assert base64.b64decode(answer["mask_png"]) == expected.mask_png
    assert answer["labels"] == list(expected.labels)
    assert answer["pixel_counts"] == list(expected.pixel_counts)
    assert sum(answer["pixel_counts"]) == width * height


def test_vision_models_are_listed_with_their_task(http_url):
    status, _, body = _call(http_url, "/v2/vision/models", method="GET")
    assert status == 200
    tasks = {m["name"]: m["task"] for m in json.loads(body)["models"]}
    assert tasks == {"lenet5": "classification", "tinyseg": "segmentation"}


BAD = {
    "undecodable picture": (
        "/v2/vision/models/lenet5/classify",
        b"this is not a picture",
        400,
        "cannot decode the image (21 bytes, starting b'this is '): expected PNG or JPEG",
    ),
    "unknown model": ("/v2/vision/models/nope/classify", b"x", 404, "unknown model: 'nope'"),
    "wrong task": (
        "/v2/vision/models/lenet5/segment",
        b"x",
        400,
        "model 'lenet5' is a classification model, not a segmentation model; use Classify",
    ),
    "bad top_k": (
        "/v2/vision/models/lenet5/classify?top_k=many",
        b"x",
        400,
        "top_k must be an integer",
    ),
    "negative top_k": (
        "/v2/vision/models/lenet5/classify?top_k=-2",
        b"x",
        400,
        "top_k must be >= 0",
    ),
    "no picture": ("/v2/vision/models/lenet5/classify", b"", 400, "brings no picture"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_vision_requests(http_url, case):
    path, body, status, fragment = BAD[case]
    got, kind, answer = _call(http_url, path, body)
    assert (got, kind) == (status, "application/json"), answer
    message = json.loads(answer)["error"]
    assert fragment in message, message

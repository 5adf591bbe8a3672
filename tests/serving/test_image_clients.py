"""What Triton's example image clients (image_client.py, grpc_image_client.py) demand of a
model, checked against a netc server: they read ModelMetadata and ModelConfig, refuse a
model unless it looks like an image classifier, shape a picture from what they read, and
print the top classes from "score:index:label" strings. A netc classifier must pass every
one of those checks and answer in that form (issue 11: FORMAT_NONE made them refuse all
netc models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import FP32_ATOL, FP32_RTOL, fp32_scale

from netc.model_card import LABELS
from netc.serving import triton_config
from netc.serving.server import BackgroundServer, ServerOptions

grpcclient = pytest.importorskip("tritonclient.grpc")
Image = pytest.importorskip("PIL.Image")
from tritonclient.grpc import model_config_pb2 as triton_pb2  # noqa: E402 (Triton's own)

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PICTURE = Path(__file__).resolve().parents[2] / "examples" / "images" / "three.png"
TOP = 3


@pytest.fixture(scope="module")
def classifier_repo(repository, tmp_path_factory):
    """REPO/digits: lenet5 with class names on its card, config.pbtxt and labels.txt as
    `netc export --repository` writes them."""
    model = onnx.load(repository / "lenet5" / "1" / "model.onnx")
    model.metadata_props.add(key=LABELS, value=json.dumps(NAMES))
    folder = tmp_path_factory.mktemp("image_clients") / "digits"
    (folder / "1").mkdir(parents=True)
    data = model.SerializeToString()
    (folder / "1" / "model.onnx").write_bytes(data)
    files, note = triton_config.export_files(folder, "1", data)
    assert note == "" and "labels.txt" in files
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder.parent


@pytest.fixture(scope="module")
def server(classifier_repo):
    running = BackgroundServer(
        classifier_repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    yield running
    running.stop()


def _image_geometry(metadata, config):
    """The checks the image clients make before sending anything; returns
    (batching, format, channels, height, width) as they would derive them."""
    assert len(metadata.inputs) == 1 and len(metadata.outputs) == 1
    assert len(config.input) == 1
    image, scores = metadata.inputs[0], metadata.outputs[0]
    assert scores.datatype == "FP32"
    batching = config.max_batch_size > 0
    per_item = list(scores.shape[1:] if batching else scores.shape)
    assert sum(1 for d in per_item if d > 1) <= 1, f"output {scores.shape} is not a vector"
    assert len(image.shape) == 3 + batching, f"input {image.shape}: not an image"
    layout = config.input[0].format
    assert layout in (triton_pb2.ModelInput.FORMAT_NCHW, triton_pb2.ModelInput.FORMAT_NHWC), (
        triton_pb2.ModelInput.Format.Name(layout)
    )
    dims = list(image.shape[1:] if batching else image.shape)
    if layout == triton_pb2.ModelInput.FORMAT_NHWC:
        height, width, channels = dims
    else:
        channels, height, width = dims
    return batching, layout, channels, height, width


def _as_the_clients_shape_it(picture, layout, channels, height, width) -> np.ndarray:
    """Scaling NONE: grey or RGB, bilinear resize, the pixel values as float32, channels
    first for NCHW."""
    converted = picture.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(converted.resize((width, height), Image.Resampling.BILINEAR))
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = pixels.astype(np.float32)
    if layout == triton_pb2.ModelInput.FORMAT_NCHW:
        pixels = pixels.transpose(2, 0, 1)
    return pixels


def _pictures() -> list:
    """The repository's digit (already 32x32 grey) and a seeded RGB picture of another
    size, so the resize and the grey conversion both do something."""
    noise = np.random.default_rng(11).integers(0, 256, size=(45, 37, 3), dtype=np.uint8)
    return [Image.open(PICTURE), Image.fromarray(noise, "RGB")]


def test_image_clients_classify_with_a_netc_model(server, classifier_repo):
    with grpcclient.InferenceServerClient(server.address) as client:
        metadata = client.get_model_metadata("digits")
        config = client.get_model_config("digits").config
        batching, layout, channels, height, width = _image_geometry(metadata, config)
        assert batching and layout == triton_pb2.ModelInput.FORMAT_NCHW
        assert (channels, height, width) == (1, 32, 32)

        batch = np.stack(
            [_as_the_clients_shape_it(p, layout, channels, height, width) for p in _pictures()]
        )
        tensor = grpcclient.InferInput(metadata.inputs[0].name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        wanted = grpcclient.InferRequestedOutput(metadata.outputs[0].name, class_count=TOP)
        result = client.infer("digits", [tensor], outputs=[wanted])
        answers = result.as_numpy(metadata.outputs[0].name)

    session = ort.InferenceSession(
        str(classifier_repo / "digits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (expected,) = session.run(None, {metadata.inputs[0].name: batch})
    assert answers.shape == (len(batch), TOP)
    for row, logits in zip(answers, expected, strict=True):
        entries = [entry.decode().split(":") for entry in row]
        assert all(len(parts) == 3 for parts in entries), entries
        indices = [int(index) for _, index, _ in entries]
        assert [label for _, _, label in entries] == [NAMES[i] for i in indices]
        assert indices == list(np.argsort(-logits, kind="stable")[:TOP])
        scores = np.array([float(score) for score, _, _ in entries])
        # fp32 differences between the two runs (scaled by the logits' size, as the suite
        # does), plus the "%f" text's rounding to six decimals
        atol = FP32_ATOL * fp32_scale(logits) + 5e-7
        np.testing.assert_allclose(scores, logits[indices], rtol=FP32_RTOL, atol=atol)

"""`netc export --pixel-input` end to end: a picture shaped the way Triton's image clients
shape it with scaling NONE (raw pixel values as float32, channels first) gets the classes
the original model gives the picture netc's server prepares, and netc's own vision
service answers the same for both exports (issue 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import FP32_ATOL, FP32_RTOL, assert_close, assert_fp32_close, fp32_scale

from netc.cli import main
from netc.model_card import ModelCard
from netc.serving.client import VisionClient
from netc.serving.images import decode, prepare
from netc.serving.model_info import ModelInfo, TensorSpec
from netc.serving.server import BackgroundServer, ServerOptions

grpcclient = pytest.importorskip("tritonclient.grpc")
Image = pytest.importorskip("PIL.Image")

DIGIT = Path(__file__).resolve().parents[2] / "examples" / "images" / "three.png"
TOP = 3
MEANS = {1: [0.3], 3: [0.485, 0.456, 0.406]}
STDS = {1: [0.25], 3: [0.229, 0.224, 0.225]}


def _description(channels: int) -> str:
    """A seeded random classifier whose card carries mean and std (training.normalize)."""
    return f"""\
name: px{channels}
task: classification
inputs:
  image: [{channels}, 32, 32]
layers:
  - {{name: conv1, op: conv, channels: 8, kernel: 3, padding: 1}}
  - {{name: relu1, op: relu}}
  - {{name: pool1, op: max_pool, kernel: 4}}
  - {{name: flatten, op: flatten}}
  - {{name: fc, op: fc, units: 10}}
outputs: [fc]
training:
  normalize: {{mean: {MEANS[channels]}, std: {STDS[channels]}}}
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """REPO with grey and rgb exported plainly and with --pixel-input, and their pictures
    (three.png; a seeded RGB picture at the model's size, so no client resizes)."""
    root = tmp_path_factory.mktemp("pixel_input")
    repo = root / "repo"
    for channels, kind in ((1, "grey"), (3, "rgb")):
        spec = root / f"{kind}.yaml"
        spec.write_text(_description(channels))
        for name, extra in ((kind, []), (f"{kind}_pixels", ["--pixel-input"])):
            args = ["export", str(spec), "--repository", str(repo), "--name", name, *extra]
            assert main(args) == 0
    noise = np.random.default_rng(3).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(root / "noise.png")
    pictures = {"grey": DIGIT, "rgb": root / "noise.png"}
    server = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    yield repo, pictures, server
    server.stop()


def _as_the_stock_clients_shape_it(path: Path, channels: int) -> np.ndarray:
    """image_client.py's preprocess with -s NONE for an NCHW model of 32x32: 'L' or 'RGB',
    bilinear resize, the pixel values as float32, channels first."""
    picture = Image.open(path).convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(picture.resize((32, 32), Image.Resampling.BILINEAR)).astype(np.float32)
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels).transpose(2, 0, 1)


def _netc_prepared(path: Path, model: onnx.ModelProto, channels: int) -> np.ndarray:
    """The picture as netc's vision service prepares it for `model`, from its card."""
    info = ModelInfo(
        name="m",
        version="1",
        inputs=(TensorSpec("image", "FP32", (channels, 32, 32)),),
        outputs=(TensorSpec("fc", "FP32", (10,)),),
        max_batch_size=8,
        preprocessing=ModelCard.from_model(model).preprocessing,
    )
    return prepare.prepare(decode.decode_encoded(path.read_bytes()), info).tensor


@pytest.mark.parametrize("kind, channels", [("grey", 1), ("rgb", 3)])
def test_triton_image_client_pixels_get_the_original_models_classes(served, kind, channels):
    repo, pictures, server = served
    assert (repo / f"{kind}_pixels" / "config.pbtxt").is_file()
    original = onnx.load(repo / kind / "1" / "model.onnx")
    session = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": _netc_prepared(pictures[kind], original, channels)})
    pixels = _as_the_stock_clients_shape_it(pictures[kind], channels)[None]

    with grpcclient.InferenceServerClient(server.address) as client:
        tensor = grpcclient.InferInput("image", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        wanted = grpcclient.InferRequestedOutput("fc", class_count=TOP)

        def top(model: str) -> tuple[list[int], np.ndarray]:
            (row,) = client.infer(model, [tensor], outputs=[wanted]).as_numpy("fc")
            entries = [entry.decode().split(":") for entry in row]
            return [int(e[1]) for e in entries], np.array([float(e[0]) for e in entries])

        indices, scores = top(f"{kind}_pixels")
        plain_indices, plain_scores = top(kind)

    assert indices == list(np.argsort(-expected[0], kind="stable")[:TOP])
    # fp32 differences between the two graphs (scaled by the logits' size, as the suite
    # does), plus the "%f" text's rounding to six decimals
    atol = FP32_ATOL * fp32_scale(expected[0]) + 5e-7
    assert_close(scores, expected[0][indices], rtol=FP32_RTOL, atol=atol, what="top scores")
    # without --pixel-input the same request gets other scores (issue 11: "1" for every digit)
    assert np.abs(plain_scores - expected[0][plain_indices]).max() > 1e-2


@pytest.mark.parametrize("kind", ["grey", "rgb"])
def test_netc_vision_service_answers_alike_for_both_exports(served, kind):
    _, pictures, server = served
    with VisionClient(server.address) as client:
        (plain,) = client.classify([str(pictures[kind])], kind, top_k=TOP)
        (pixels,) = client.classify([str(pictures[kind])], f"{kind}_pixels", top_k=TOP)
    assert [index for _, index, _ in pixels] == [index for _, index, _ in plain]
    assert_fp32_close([p for *_, p in pixels], [p for *_, p in plain], what="probabilities")

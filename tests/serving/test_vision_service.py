"""netc's vision service end to end: exported models, a real server, VisionClient, `netc infer`.

Results are checked against onnxruntime run here on the same file, fed by the
training-time preprocessing (`runtime.preprocess.Preprocessing`).
"""

import io
import json

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_fp32_close
from PIL import Image

from netc.cli import main
from netc.protos.generated import vision_pb2, vision_pb2_grpc
from netc.runtime.preprocess import Preprocessing
from netc.serving.client import RequestFailed, VisionClient
from netc.serving.images import decode
from netc.serving.server import BackgroundServer, ServerOptions

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
MEAN, STD = [0.5], [0.25]
RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """lenet5 (1x32x32, normalised, with labels) and tinyseg (open H/W, needs multiples of 4)."""
    root = tmp_path_factory.mktemp("vision_repo")
    for name in ("lenet5", "tinyseg"):
        assert main(["export", name, "--repository", str(root), "--name", name, "--no-verify"]) == 0
    path = root / "lenet5" / "1" / "model.onnx"
    model = onnx.load(path)
    props = {p.key: p for p in model.metadata_props}
    pre = json.loads(props["netc.preprocessing"].value)
    props["netc.preprocessing"].value = json.dumps({**pre, "mean": MEAN, "std": STD})
    model.metadata_props.add(key="netc.labels", value=json.dumps(DIGITS))
    onnx.save(model, path)
    return root


@pytest.fixture(scope="module")
def server(repo):
    running = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with VisionClient(server.address) as vision:
        yield vision


def _session(repo, name):
    return ort.InferenceSession(
        str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _softmax(x, axis):
    return torch.softmax(torch.from_numpy(x), axis).numpy()


def test_list_models_says_what_each_model_does(client):
    models = {m.name: m for m in client.models()}
    assert set(models) == {"lenet5", "tinyseg"}
    assert models["lenet5"].task == "classification" and models["lenet5"].labels == tuple(DIGITS)
    assert models["lenet5"].input_shape == (1, 32, 32) and models["lenet5"].version == "1"
    assert models["tinyseg"].task == "segmentation"
    assert models["tinyseg"].input_shape == (3, -1, -1)


def test_classify_png_and_raw_tensors_match_local_onnxruntime(repo, server, client):
    grey = (RNG.random((40, 30)) * 255).astype(np.uint8)
    picture = torch.from_numpy(grey / np.float32(255))[None]
    x = Preprocessing(MEAN, STD, input_size=(32, 32)).apply(picture)[None].numpy()
    expected = _softmax(_session(repo, "lenet5").run(None, {"image": x})[0][0], 0)
    best = np.argsort(-expected)[:3]
    sent = [_png(grey), grey, grey.astype(np.float32) / 255, np.dstack([grey] * 3)]
    results = client.classify(sent, "lenet5", top_k=3)
    assert len(results) == len(sent)
    for result in results:
        assert [index for _, index, _ in result] == list(best)
        assert [label for label, _, _ in result] == [DIGITS[i] for i in best]
        assert_fp32_close([score for _, _, score in result], expected[best])


def test_images_of_one_request_are_batched_together(server, client):
    stats = server.running.repository.get("lenet5").stats
    before = {size: runs.count for size, runs in stats.batch_sizes.items()}
    pictures = [(RNG.random((32, 32)) * 255).astype(np.uint8) for _ in range(8)]
    assert len(client.classify(pictures, "lenet5")) == 8
    grown = [size for size, runs in stats.batch_sizes.items() if runs.count > before.get(size, 0)]
    assert max(grown) > 1, f"batch sizes run: {stats.batch_sizes}"


def test_top_k_defaults_to_5_and_is_capped_at_the_class_count(client):
    grey = np.zeros((32, 32), np.uint8)
    assert len(client.classify([grey], "lenet5", top_k=0)[0]) == 5
    assert sorted(i for _, i, _ in client.classify([grey], "lenet5", top_k=50)[0]) == list(
        range(10)
    )


def test_segment_returns_a_mask_of_the_images_own_size(repo, client):
    rgb = (RNG.random((50, 70, 3)) * 255).astype(np.uint8)
    mask, labels, scores = client.segment(_png(rgb), "tinyseg", scores=True)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8
    assert labels == ["0", "1", "2", "3"] and scores.shape == (4, 50, 70)
    # reference: pad to 52x72 (tinyseg needs multiples of 4), run, crop back
    x = np.pad(rgb.transpose(2, 0, 1) / np.float32(255), ((0, 0), (0, 2), (0, 2)), mode="edge")
    logits = _session(repo, "tinyseg").run(None, {"image": x[None]})[0][0, :, :50, :70]
    assert_fp32_close(scores, _softmax(logits, 0))
    assert np.mean(mask == logits.argmax(axis=0)) > 0.999


def test_segment_reports_pixel_counts_and_takes_raw_tensors(server):
    rgb = (RNG.random((9, 13, 3)) * 255).astype(np.uint8)
    with grpc.insecure_channel(server.address) as channel:
        stub = vision_pb2_grpc.VisionServiceStub(channel)
        tensor = vision_pb2.Tensor(
            shape=[9, 13, 3], layout="HWC", datatype="UINT8", data=rgb.tobytes()
        )
        response = stub.Segment(
            vision_pb2.SegmentRequest(model="tinyseg", image=vision_pb2.Image(tensor=tensor)),
            timeout=30,
        )
    assert (response.height, response.width) == (9, 13)
    mask = np.asarray(Image.open(io.BytesIO(response.mask_png)))
    assert mask.shape == (9, 13)
    assert list(response.pixel_counts) == list(np.bincount(mask.ravel(), minlength=4))
    assert not response.HasField("scores")


def test_netc_infer_prints_labels_and_writes_masks(server, tmp_path, capsys):
    files = []
    for i, shape in enumerate([(32, 32), (20, 25, 3)]):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(_png((RNG.random(shape) * 255).astype(np.uint8)))
        files.append(str(path))
    assert (
        main(["infer", "--model", "lenet5", *files, "--url", server.address, "--top-k", "2"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == files
    assert all(line.count("(") == 2 and any(d in line for d in DIGITS) for line in lines)

    picture = tmp_path / "street.png"
    picture.write_bytes(_png((RNG.random((50, 70, 3)) * 255).astype(np.uint8)))
    out = tmp_path / "masks"
    assert (
        main(
            [
                "infer",
                "--model",
                "tinyseg",
                str(picture),
                "--url",
                server.address,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    written = Image.open(out / "street_mask.png")
    assert written.size == (70, 50) and written.mode == "P"  # class indices, VOC colours
    assert f"wrote {out / 'street_mask.png'} (70x50;" in capsys.readouterr().out


def _status(call) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        call()
    return info.value


def test_bad_requests_get_status_codes_and_the_server_keeps_serving(client, monkeypatch):
    grey = np.zeros((32, 32), np.uint8)
    error = _status(lambda: client.classify([grey, b"not a picture"], "lenet5"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1: cannot decode the image" in str(error) and "PNG or JPEG" in str(error)

    error = _status(lambda: client.classify([grey], "lenet"))
    assert error.code == grpc.StatusCode.NOT_FOUND
    assert "Request for unknown model: 'lenet' is not found" in str(error)
    assert "did you mean 'lenet5'" in str(error)

    error = _status(lambda: client.classify([grey], "tinyseg"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'tinyseg' is a segmentation model" in str(error) and "use Segment" in str(error)
    error = _status(lambda: client.segment(grey, "lenet5"))
    assert "'lenet5' is a classification model" in str(error)

    error = _status(lambda: client.classify([], "lenet5"))
    assert "no images" in str(error)

    monkeypatch.setattr(decode, "MAX_PIXELS", 1000)
    error = _status(lambda: client.segment(_png(np.zeros((50, 70), np.uint8)), "tinyseg"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "70x50" in str(error) and "at most 0.001 megapixels" in str(error)
    small = _png(np.zeros((20, 20), np.uint8))  # 400 pixels each, 1,200 together
    error = _status(lambda: client.classify([small, small, small], "lenet5"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "the request's 3 images hold" in str(error) and "a request" in str(error)
    assert len(client.classify([small, small], "lenet5")) == 2  # 800: within the budget
    monkeypatch.undo()

    assert len(client.models()) == 2
    assert client.segment(grey, "tinyseg")[0].shape == (32, 32)


def test_netc_infer_user_errors_exit_2_with_one_message(server, tmp_path, capsys):
    picture = tmp_path / "a.png"
    picture.write_bytes(_png(np.zeros((8, 8), np.uint8)))
    assert main(["infer", "--model", "lenet", str(picture), "--url", server.address]) == 2
    err = capsys.readouterr().err
    assert "has no model 'lenet'" in err and "did you mean 'lenet5'" in err
    assert (
        main(["infer", "--model", "lenet5", str(tmp_path / "missing.png"), "--url", server.address])
        == 2
    )
    assert "cannot read" in capsys.readouterr().err
    assert main(["infer", "--model", "lenet5", str(picture), "--url", "127.0.0.1:1"]) == 2
    assert "cannot reach a netc server at 127.0.0.1:1" in capsys.readouterr().err
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert (
        main(["infer", "--model", "lenet5", str(tmp_path / "bad.png"), "--url", server.address])
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "INVALID_ARGUMENT" in err and "Traceback" not in err
    for url, said in (("localhost:99999", "from 1 to 65535"), ("", "expected HOST:PORT")):
        assert main(["infer", "--model", "lenet5", str(picture), "--url", url]) == 2
        assert said in capsys.readouterr().err
    args = ["infer", "--model", "lenet5", "--version", "7", str(picture)]
    assert main([*args, "--url", server.address]) == 2
    assert "has no version 7 of 'lenet5'; it serves version 1" in capsys.readouterr().err


def test_more_images_than_the_queue_holds_is_an_invalid_request(client):
    grey = np.zeros((8, 8), np.uint8)
    error = _status(lambda: client.classify([grey] * 257, "lenet5"))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "257 images" in str(error) and "at most 256" in str(error)
    assert len(client.classify([grey] * 256, "lenet5")) == 256  # the most that fits


def test_scores_too_large_for_one_answer_are_refused_before_the_run(repo):
    running = BackgroundServer(
        repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None, max_message_mb=1)
    )
    try:
        with VisionClient(running.address, max_message_mb=1) as small:
            picture = _png(np.zeros((300, 300), np.uint8))  # 4 classes x 300 x 300 floats
            error = _status(lambda: small.segment(picture, "tinyseg", scores=True))
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "return_scores: 4 class scores for a 300x300 image take 1 MiB" in str(error)
            assert "over this server's 1 MiB message limit" in str(error)
            mask, _, none = small.segment(picture, "tinyseg")  # the mask alone fits
            assert mask.shape == (300, 300) and none is None
            assert small.segment(_png(np.zeros((200, 200), np.uint8)), "tinyseg", True)[2].shape
    finally:
        running.stop()


def test_a_model_with_more_classes_than_a_mask_holds_is_refused_before_any_work(tmp_path):
    repo = tmp_path / "repo"
    export = ["export", "tinyseg", "--repository", str(repo), "--name", "wide"]
    assert main([*export, "--set", "num_classes=300", "--no-verify"]) == 0
    running = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    try:
        with VisionClient(running.address) as client:
            error = _status(lambda: client.segment(b"not even a picture", "wide"))
            assert "model 'wide' has 300 classes; masks hold at most 256" in str(error)
    finally:
        running.stop()


def test_one_logit_models_answer_two_classes(tmp_path):
    """A classifier and a segmenter with one output channel (trained with binary
    cross-entropy): the score is class 1's logit, so the answer has two classes, the
    sigmoid's, and the mask marks where the logit is positive."""
    repo = tmp_path / "repo"
    for zoo, name in (("lenet5", "binary"), ("tinyseg", "edges")):
        export = ["export", zoo, "--repository", str(repo), "--name", name]
        assert main([*export, "--set", "num_classes=1", "--no-verify"]) == 0
    picture = RNG.random((32, 32)).astype(np.float32)  # a pixel tensor, already 32x32
    running = BackgroundServer(repo, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    try:
        with VisionClient(running.address) as client:
            (labels,) = client.classify([picture], "binary", top_k=5)
            mask, names, probs = client.segment(np.dstack([picture] * 3), "edges", scores=True)
    finally:
        running.stop()
    scores = {index: score for _, index, score in labels}
    assert sorted(scores) == [0, 1] and abs(scores[0] + scores[1] - 1) < 1e-5
    model = onnx.load(repo / "binary" / "1" / "model.onnx")
    pre = json.loads({p.key: p.value for p in model.metadata_props}["netc.preprocessing"])
    x = (picture - (pre["mean"] or [0])[0]) / (pre["std"] or [1])[0]
    logit = _session(repo, "binary").run(None, {"image": x[None, None]})[0].item()
    assert abs(scores[1] - 1 / (1 + np.exp(-logit))) < 1e-5
    assert names == ["0", "1"] and probs is not None and probs.shape == (2, 32, 32)
    np.testing.assert_array_equal(mask, (probs[1] > 0.5).astype(np.uint8))
    assert_fp32_close(probs.sum(axis=0), np.ones((32, 32), np.float32))

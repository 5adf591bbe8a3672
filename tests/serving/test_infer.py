"""serving.infer, the Python API under `netc infer`, against a real server on a loopback
port: finding a model, classifying files in bounded requests, writing mask files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netc.errors import UserError
from netc.serving.client import VisionClient
from netc.serving.images.masks import read_mask
from netc.serving.infer import (
    ImageFile,
    classify_files,
    find_model,
    mask_names,
    read_files,
    request_chunks,
    segment_files,
)
from netc.serving.server import BackgroundServer, ServerOptions

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def server(repository):
    """lenet5 (a classifier, 1x32x32) and tinyseg (segmentation, open H and W)."""
    running = BackgroundServer(
        repository, ServerOptions(host="127.0.0.1", port=0, metrics_port=None)
    )
    yield running
    running.stop()


@pytest.fixture
def client(server):
    with VisionClient(server.address) as vision:
        yield vision


def _picture(path: Path, shape: tuple[int, ...]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((RNG.random(shape) * 255).astype(np.uint8)).save(path)
    return str(path)


def test_infer_requests_stay_small_and_masks_never_overwrite_each_other():
    small, big = b"x" * 1000, b"x" * (20 << 20)
    assert [len(c) for c in request_chunks([small] * 70)] == [32, 32, 6]
    assert [len(c) for c in request_chunks([big, big, small, big])] == [1, 2, 1]
    assert [len(c) for c in request_chunks([b"x" * (40 << 20)])] == [1]  # one file too big alone
    assert mask_names([Path("a/x.png"), Path("b/x.png"), Path("b/x.jpg"), Path("y.png")]) == [
        "x_mask.png",
        "x_2_mask.png",
        "x_3_mask.png",
        "y_mask.png",
    ]


def test_find_model_gives_the_served_entry_or_says_why_not(client, server):
    assert find_model(client, "lenet5").task == "classification"
    assert find_model(client, "tinyseg", "1").task == "segmentation"
    with pytest.raises(UserError, match="has no version 7 of 'lenet5'; it serves version 1"):
        find_model(client, "lenet5", "7")
    with pytest.raises(UserError, match=r"has no model 'lenet'; .* \(did you mean 'lenet5'\?\)"):
        find_model(client, "lenet")


def test_classify_files_answers_every_file_in_order_in_requests_of_32(client, tmp_path):
    paths = [_picture(tmp_path / f"p{i}.png", (32, 32)) for i in range(35)]
    sizes = []
    classify = client.classify

    def counted(images, *args, **kwargs):
        sizes.append(len(images))
        return classify(images, *args, **kwargs)

    client.classify = counted
    results = list(classify_files(client, paths, "lenet5", top_k=3))
    assert sizes == [32, 3]
    assert [str(path) for path, _ in results] == paths
    assert all(len(labels) == 3 for _, labels in results)
    assert all(isinstance(index, int) and 0 < score <= 1 for _, index, score in results[0][1])
    with pytest.raises(UserError, match=r"cannot read .*missing\.png"):
        next(classify_files(client, [paths[0], tmp_path / "missing.png"], "lenet5"))


def test_segment_files_writes_palette_masks_and_overlays(client, tmp_path):
    paths = [
        _picture(tmp_path / "a" / "scene.png", (50, 70, 3)),
        _picture(tmp_path / "b" / "scene.png", (20, 30)),
    ]
    files = read_files(paths)  # read ahead, as netc infer does
    assert isinstance(files[0], ImageFile) and files[0].path == Path(paths[0])
    out = tmp_path / "masks"
    results = list(segment_files(client, files, "tinyseg", out, overlay=True))
    assert [r.mask_file for r in results] == [out / "scene_mask.png", out / "scene_2_mask.png"]
    assert [r.overlay_file for r in results] == [
        out / "scene_overlay.png",
        out / "scene_2_overlay.png",
    ]
    assert [r.mask.shape for r in results] == [(50, 70), (20, 30)]
    for result in results:
        mask, labels = read_mask(result.mask_file)
        assert np.array_equal(mask, result.mask) and labels == result.labels
        with Image.open(result.overlay_file) as overlay:
            assert overlay.size == mask.shape[::-1]
        classes = result.classes()
        assert sum(pixels for _, _, pixels in classes) == mask.size
        assert [pixels for _, _, pixels in classes] == sorted(
            (pixels for _, _, pixels in classes), reverse=True
        )
    plain = list(segment_files(client, paths[:1], "tinyseg", tmp_path / "plain"))
    assert plain[0].overlay_file is None and not (tmp_path / "plain" / "scene_overlay.png").exists()

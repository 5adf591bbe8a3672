"""`netc infer`: what it says when the model it names is not being served (against a real
server on a loopback port), and what it prints and writes for a segmentation model."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from netc.cli import main
from netc.serving import client as client_module
from netc.serving.images import decode
from netc.serving.images.masks import read_mask
from netc.serving.server import BackgroundServer, ServerOptions

TYPO = "max_batch_size: 8\ninstances: 1\nlables: [a, b]\n"  # 'labels', misspelt on line 3
LABELS = ["background", "circle", "square", "triangle"]


@pytest.fixture(scope="module")
def server(repository, tmp_path_factory):
    """lenet5 and tinyseg, and 'digits': lenet5 again, with a typo in its config.yaml."""
    root = tmp_path_factory.mktemp("infer") / "repo"
    shutil.copytree(repository, root)
    shutil.copytree(root / "lenet5", root / "digits")
    (root / "digits" / "config.yaml").write_text(TYPO)
    running = BackgroundServer(root, ServerOptions(host="127.0.0.1", port=0, metrics_port=None))
    yield running
    running.stop()


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "seven.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    return str(path)


def _infer(capsys, server, model: str, picture: str) -> tuple[int, str]:
    code = main(["infer", "--model", model, "--url", server.address, picture])
    return code, capsys.readouterr().err


def test_a_model_that_failed_to_load_says_why(server, picture, capsys):
    code, err = _infer(capsys, server, "digits", picture)
    assert code == 2
    assert f"the server at {server.address}: model 'digits' is UNAVAILABLE: " in err
    assert "config.yaml:3:" in err and "unknown setting 'lables'" in err
    assert "did you mean 'labels'?" in err
    assert "has no model" not in err and "Traceback" not in err


def test_an_unloaded_model_says_so(server, picture, capsys):
    server.call(server.running.repository.unload("tinyseg"))
    try:
        code, err = _infer(capsys, server, "tinyseg", picture)
    finally:
        server.call(server.running.repository.load("tinyseg"))
    assert code == 2 and "model 'tinyseg' is UNAVAILABLE: unloaded" in err


def test_a_model_the_server_never_had_lists_those_it_serves(server, picture, capsys):
    code, err = _infer(capsys, server, "lenet", picture)
    assert code == 2
    assert f"the server at {server.address} has no model 'lenet'; it serves lenet5, tinyseg" in err


class FakeServer:
    """What netc infer asks of a server, answered locally: a square in the middle."""

    def __init__(self, url, **connection):  # TLS and token options
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def models(self):
        return [SimpleNamespace(name="shapes", version="1", task="segmentation")]

    def segment(self, data, model, version=""):
        height, width = decode.decode_encoded(data).shape[1:]
        mask = np.zeros((height, width), np.uint8)
        mask[height // 4 : height // 2, width // 4 : width // 2] = 2
        return mask, LABELS, None


def test_infer_writes_palette_masks_and_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(client_module, "VisionClient", FakeServer)
    picture = tmp_path / "scene.png"
    Image.fromarray(np.full((20, 40, 3), 200, np.uint8)).save(picture)
    out = tmp_path / "masks"
    assert main(["infer", "--model", "shapes", str(picture), "--out", str(out), "--overlay"]) == 0
    line = capsys.readouterr().out
    assert line == (
        f"{picture}: wrote {out / 'scene_mask.png'} and {out / 'scene_overlay.png'} "
        "(40x20; background 93.8% #000000, square 6.2% #008000)\n"
    )
    mask, labels = read_mask(out / "scene_mask.png")
    assert labels == LABELS and mask[5, 10] == 2 and mask.shape == (20, 40)
    with Image.open(out / "scene_overlay.png") as overlay:
        assert overlay.size == (40, 20) and overlay.getpixel((10, 5)) == (100, 164, 100)
        assert overlay.getpixel((0, 0)) == (200, 200, 200)

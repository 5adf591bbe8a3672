"""`netc infer` against a real server on a loopback port: what it says when the model it
names is not being served."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from netc.cli import main
from netc.serving.server import BackgroundServer, ServerOptions

TYPO = "max_batch_size: 8\ninstances: 1\nlables: [a, b]\n"  # 'labels', misspelt on line 3


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

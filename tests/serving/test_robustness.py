"""Inputs and situations found by review to crash or mislead: each now answered clearly."""

import asyncio
import shutil

import numpy as np
import pytest
from helpers import open_classifier

from netc.cli import main
from netc.serving.config import ModelConfig
from netc.serving.errors import InvalidRequest
from netc.serving.images import decode
from netc.serving.model import ServedModel
from netc.serving.repository import ModelRepository

OPEN_CLASSIFIER = open_classifier("opencls", channels=3, kernel=7)


def test_a_picture_below_the_receptive_field_is_the_requests_fault(tmp_path):
    spec = tmp_path / "opencls.yaml"
    spec.write_text(OPEN_CLASSIFIER)
    repo = tmp_path / "repo"
    assert main(["export", str(spec), "--repository", str(repo), "--name", "opencls"]) == 0
    model = ServedModel("opencls", "1", repo / "opencls" / "1" / "model.onnx", ModelConfig())
    assert model._run({"image": np.zeros((1, 3, 7, 7), np.float32)})["fc"].shape == (1, 5)
    with pytest.raises(
        InvalidRequest, match=r"'opencls' cannot run on input 'image' \[1, 3, 6, 6\]"
    ):
        model._run({"image": np.zeros((1, 3, 6, 6), np.float32)})


def test_a_tensor_whose_size_overflows_is_refused():
    with pytest.raises(InvalidRequest, match=r"needs \d+ bytes of data, found 0"):
        decode.decode_tensor([2**62, 4, 1], "CHW", "UINT8", b"")  # np.prod wraps to 0


def test_version_folders_are_numbers(repository, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(repository / "lenet5" / "1", root / "padded" / "01")
    shutil.copytree(repository / "lenet5" / "1", root / "odd" / "²")  # not a version
    shutil.copytree(repository / "lenet5" / "1", root / "picky" / "5")
    (root / "picky" / "config.yaml").write_text("version_policy: [3]\n")

    async def scenario():
        repo = ModelRepository(root)
        await repo.load_all()
        try:
            return repo.get("padded", "1").version, {e.name: e for e in repo.index()}
        finally:
            await repo.close()

    version, index = asyncio.run(scenario())
    assert version == "1"
    assert index["odd"].state == "UNAVAILABLE" and "no version folder" in index["odd"].reason
    assert "no versions 3 (its version_policy) folder" in index["picky"].reason


def test_infer_top_k_is_bounded(capsys):
    assert main(["infer", "--model", "m", "--top-k", "3000000000", "x.png"]) == 2
    assert "--top-k must be from 1 to 2,147,483,647" in capsys.readouterr().err


def test_foreign_metadata_under_netc_keys_is_ignored(repository, tmp_path):
    import onnx

    model = onnx.load(repository / "lenet5" / "1" / "model.onnx")
    written = {"netc.preprocessing": "[1, 2]", "netc.output_stride": '"x"', "netc.labels": "5"}
    for prop in model.metadata_props:
        if prop.key in written:
            prop.value = written.pop(prop.key)
    for key, value in written.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    info = ServedModel("foreign", "1", path, ModelConfig()).info
    assert (info.preprocessing, info.output_stride, info.labels) == (None, None, None)

"""`training.normalize` given, not fitted: a pretrained net's mean and std go from the
description into the checkpoint, the ONNX model card and the server's preprocessing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import assert_close

from netc.cli import main
from netc.errors import ConfigError
from netc.model_card import ModelCard
from netc.runtime import checkpoint
from netc.runtime.config import parse_training
from netc.runtime.train import train

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}

RGB = """\
name: rgb
params: {num_classes: 2}
inputs: {image: [3, 8, 8]}
layers:
  - {name: conv1, op: conv, channels: 4, kernel: 3, padding: 1}
  - {name: relu1, op: relu}
  - {name: pool, op: adaptive_avg_pool, output: 1}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: $num_classes}
training:
  epochs: 1
  batch_size: 8
  normalize: NORMALIZE
"""


def test_normalize_reads_a_name_a_mapping_or_a_flag():
    assert parse_training({"normalize": "imagenet"}).normalize == IMAGENET
    assert parse_training({"normalize": {"mean": 0.5, "std": [0.25]}}).normalize == {
        "mean": [0.5],
        "std": [0.25],
    }
    assert parse_training({"normalize": False}).normalize is False
    assert parse_training(None).normalize is True


@pytest.mark.parametrize(
    "value, message",
    [
        ("imagnet", "did you mean 'imagenet'"),
        ({"mean": [0.5], "std": [0.0]}, "training.normalize.std"),
        ({"mean": [0.5], "sdt": [0.5]}, "training.normalize.sdt"),
        ({"mean": [0.5]}, "training.normalize.std: missing"),
        ({"mean": [0.1, 0.2, 0.3], "std": [0.1, 0.2]}, "mean has 3 values and std 2"),
        ({"mean": ["a"], "std": [1.0]}, r"training.normalize.mean\[0\]"),
    ],
)
def test_a_bad_normalize_is_named(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_training({"normalize": value})


@pytest.fixture
def rgb_data(tmp_path):
    generator = np.random.default_rng(0)
    x = generator.random((48, 3, 8, 8), dtype=np.float32)
    y = np.arange(48) % 2
    path = tmp_path / "rgb.npz"
    np.savez(path, x=x, y=y)
    return str(path)


def _spec(tmp_path, normalize: str) -> str:
    path = tmp_path / "rgb.yaml"
    path.write_text(RGB.replace("NORMALIZE", normalize))
    return str(path)


def test_given_statistics_reach_the_checkpoint_the_model_card_and_the_server(tmp_path, rgb_data):
    from netc.serving.config import ModelConfig
    from netc.serving.images.prepare import image_input, prepare
    from netc.serving.model import ServedModel

    spec = _spec(tmp_path, "imagenet")
    train(spec, rgb_data, tmp_path / "run", quiet=True)
    stored = checkpoint.load(tmp_path / "run")
    assert_close(stored["preprocessing"]["mean"], IMAGENET["mean"], rtol=1e-7, atol=0)
    assert_close(stored["preprocessing"]["std"], IMAGENET["std"], rtol=1e-7, atol=0)
    assert stored["config"]["normalize"] == IMAGENET

    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "m.onnx")]) == 0
    card = ModelCard.from_props(
        {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    )
    assert card.preprocessing is not None
    assert_close(card.preprocessing.mean, IMAGENET["mean"], rtol=1e-7, atol=0)
    assert_close(card.preprocessing.std, IMAGENET["std"], rtol=1e-7, atol=0)

    info = ServedModel("rgb", "1", tmp_path / "m.onnx", ModelConfig()).info
    picture = np.random.default_rng(1).random((3, 8, 8), dtype=np.float32)
    prepared = prepare(picture, image_input(info)).tensor
    mean = np.array(IMAGENET["mean"], np.float32).reshape(3, 1, 1)
    std = np.array(IMAGENET["std"], np.float32).reshape(3, 1, 1)
    assert_close(prepared[0], (picture - mean) / std, rtol=1e-6, atol=1e-6)


def test_a_description_exported_with_weights_carries_its_given_statistics(tmp_path):
    spec = _spec(tmp_path, "{mean: [0.5], std: [0.25]}")
    state = {
        "conv1.weight": torch.randn(4, 3, 3, 3),
        "conv1.bias": torch.zeros(4),
        "fc.weight": torch.randn(2, 4),
        "fc.bias": torch.zeros(2),
    }
    torch.save(state, tmp_path / "w.pth")
    out = tmp_path / "m.onnx"
    assert main(["export", spec, "--weights", str(tmp_path / "w.pth"), "-o", str(out)]) == 0
    card = ModelCard.from_props({p.key: p.value for p in onnx.load(out).metadata_props})
    assert card.preprocessing is not None
    assert card.preprocessing.normalisation(3) == ((0.5,) * 3, (0.25,) * 3)


def test_statistics_for_other_channels_than_the_data_are_refused(tmp_path, capsys):
    spec = tmp_path / "grey.yaml"
    spec.write_text(RGB.replace("[3, 8, 8]", "[1, 8, 8]").replace("NORMALIZE", "imagenet"))
    code = main(["train", str(spec), "--data", "digits", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "training.normalize.mean" in err and "3 values for images of 1 channels" in err
    assert not (tmp_path / "r").exists()

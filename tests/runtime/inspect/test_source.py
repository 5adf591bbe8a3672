"""What inspect reads: a run folder, and pictures from files or the run's held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import make_run, write_picture
from PIL import Image

from netc.errors import UserError
from netc.runtime.datasets import load_dataset, split
from netc.runtime.inspect import source


def test_run_folder_gives_the_trained_weights_and_history(tmp_path):
    run = make_run(tmp_path / "run")
    model = source.load_run(run)
    assert model.graph.name == "lenet5" and model.labels[3] == "3"
    assert [row["epoch"] for row in model.history] == [1, 2, 3]
    assert model.input_size == (32, 32) and model.channels == 1
    assert not model.module.training
    assert not any(getattr(m, "inplace", False) for m in model.module.modules())


def test_old_metric_names_are_read_as_validation_figures(tmp_path):
    run = make_run(tmp_path / "run", history=[{"epoch": 1, "loss": 1.0, "accuracy": 0.9}])
    assert source.load_run(run).history == [{"epoch": 1, "loss": 1.0, "val_accuracy": 0.9}]


def test_pictures_from_data_are_the_runs_held_out_split(tmp_path):
    model = source.load_run(make_run(tmp_path / "run"))
    pictures = source.pictures_from_data(model, "digits", limit=1000)
    _, held_out = split(load_dataset("digits"), 0.15, 0)
    assert len(pictures.inputs) == len(held_out) == 270
    assert tuple(pictures.shown.shape[1:]) == (1, 32, 32)  # 8x8 digits at the net's size
    assert torch.equal(pictures.targets, held_out.targets)
    torch.testing.assert_close(pictures.inputs, (pictures.shown - 0.3) / 0.4)
    assert len(source.pictures_from_data(model, "digits", limit=5).inputs) == 5
    colour = tmp_path / "colour.npz"
    np.savez(colour, x=np.zeros((4, 3, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    with pytest.raises(UserError, match=r"colour\.npz: 3-channel images, but lenet5 takes 1"):
        source.pictures_from_data(model, str(colour), limit=5)


def test_pictures_from_files_take_the_networks_channels_and_size(tmp_path):
    model = source.load_run(make_run(tmp_path / "run"))
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((10, 20, 3), 255, np.uint8)).save(rgb)
    pictures = source.pictures_from_files(model, [rgb, write_picture(tmp_path / "g.png")])
    assert tuple(pictures.shown.shape) == (2, 1, 32, 32) and pictures.names == ["rgb.png", "g.png"]
    assert torch.allclose(pictures.shown[0], torch.ones(1, 32, 32))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"--image .*bad.png: not a readable PNG or JPEG"):
        source.pictures_from_files(model, [tmp_path / "bad.png"])

"""Feature maps, filters and curves: PNG sizes and tile counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import build, raw_batch
from PIL import Image

from netc.errors import UserError
from netc.runtime.inspect import curves, feature_maps, filters, tiles


def size_of(path):
    with Image.open(path) as png:
        return png.size


@pytest.mark.parametrize(
    ("count", "columns", "shape"),
    [(1, 8, (1, 1)), (7, 8, (1, 7)), (17, 8, (3, 8)), (48, 8, (6, 8))],
)
def test_grid_shape(count, columns, shape):
    assert tiles.grid_shape(count, columns) == shape


@pytest.mark.parametrize(("count", "columns"), [(1, 1), (7, 7), (9, 9), (10, 5), (17, 9), (33, 9)])
def test_balanced_columns(count, columns):
    assert tiles.balanced_columns(count) == columns


def test_feature_maps_one_tile_per_channel_after_the_picture(tmp_path, lenet):
    pictures = raw_batch(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    grid = feature_maps.save(lenet, pictures, "conv2", tmp_path)
    assert (grid.tiles, grid.rows, grid.columns) == (17, 2, 9)  # rows of 9 and 8
    assert size_of(grid.path) == grid.pixels == tiles.grid_pixels(2, 9)
    capped = feature_maps.save(lenet, pictures, "relu2", tmp_path, max_channels=5)
    # one row of 6; its longer title ("the 5 most active shown") may wrap
    assert capped.tiles == 6 and size_of(capped.path) == capped.pixels
    assert capped.pixels[0] == tiles.grid_pixels(1, 6)[0]
    assert grid.pixels == (
        9 * tiles.TILE + 8 * tiles.GAP + 2 * tiles.MARGIN,
        tiles._title_height(1) + 2 * (tiles.TILE + tiles.LABEL) + tiles.GAP + tiles.MARGIN,
    )


def test_a_wide_layer_shows_its_most_active_channels_and_says_so(tmp_path):
    means = np.random.default_rng(0).permutation(100).astype(np.float32)
    output = np.broadcast_to(means[:, None, None], (100, 4, 4)).copy()
    assert feature_maps.most_active(output, 64) == sorted(np.argsort(-means)[:64].tolist())
    assert feature_maps.most_active(output[:10], 64) == list(range(10))
    shown = torch.zeros(1, 8, 8)
    grid = feature_maps.draw("net", "wide", output, shown, "p.png", tmp_path, 64, field="f")
    assert grid.tiles == 65 and size_of(grid.path) == grid.pixels


def test_feature_maps_of_a_vector_is_a_user_error(tmp_path, lenet):
    with pytest.raises(UserError, match=r"--layer fc1: its output \[120\] is not a feature map"):
        feature_maps.save(lenet, raw_batch(torch.zeros(1, 1, 32, 32)), "fc1", tmp_path)


def test_filters_first_conv_one_tile_each_deeper_conv_pairs(tmp_path, lenet):
    first = filters.save(lenet, None, tmp_path)
    assert first.path.name == "filters_conv1.png" and first.tiles == 6
    deeper = filters.save(lenet, "conv2", tmp_path)
    assert (deeper.rows, deeper.columns, deeper.tiles) == (8, 6, 48)  # 8 outputs x 6 inputs
    assert size_of(deeper.path) == deeper.pixels
    with pytest.raises(UserError, match="it is a max_pool layer, not a conv"):
        filters.save(lenet, "pool1", tmp_path)


def test_rgb_filters_are_colour_tiles(tmp_path):
    model = build("""
name: rgb
task: classification
inputs: {image: [3, 16, 16]}
layers:
  - {name: conv1, op: conv, channels: 10, kernel: 5}
outputs: [conv1]
""")
    grid = filters.save(model, None, tmp_path)
    assert (grid.tiles, grid.rows, grid.columns) == (10, 2, 8)
    with Image.open(grid.path) as png:
        assert png.mode == "RGBA" and png.size == grid.pixels


def test_curves_reads_new_and_old_metric_names(tmp_path):
    new = [
        {
            "epoch": 1,
            "loss": 1.0,
            "train_mean_iou": 0.3,
            "val_loss": 1.1,
            "val_mean_iou": 0.25,
            "lr": 0.01,
            "seconds": 2.0,
        },
        {
            "epoch": 2,
            "loss": 0.5,
            "train_mean_iou": 0.6,
            "val_loss": 0.6,
            "val_mean_iou": 0.55,
            "lr": 0.005,
            "seconds": 4.0,
        },
    ]
    titles = [title for title, _ in curves.panels(new)]
    assert titles == ["loss", "mean IoU", "learning rate"]
    old = [{"epoch": 1, "loss": 1.0, "accuracy": 0.8, "lr": 0.1}]  # before the val_ names
    (title, lines), *_ = curves.panels(old)[1:]
    assert title == "accuracy" and [label for label, *_ in lines] == ["validation"]
    path = curves.save(new, tmp_path / "curves.png", "tinyseg")
    assert size_of(path) == (curves.WIDTH, curves.HEIGHT)
    with pytest.raises(UserError, match="has no training history"):
        curves.save([], tmp_path / "none.png", "fresh")

"""Grad-CAM: a net built to look only at the left half lights the left half."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nets import build, raw_batch
from PIL import Image

from netc.errors import UserError
from netc.runtime.inspect import gradcam

# conv1 sees the whole picture; `left` keeps the left 8 of its 16 columns (the crop's
# reference is 16x8), and everything after it sees only those.
LEFT_HALF = """
name: left_half
task: classification
inputs: {image: [1, 16, 16]}
layers:
  - {name: halves, op: max_pool, kernel: [1, 2]}
  - {name: conv1, op: conv, channels: 4, kernel: 3, padding: 1, inputs: [image]}
  - {name: left, op: crop, offset: [0, 0], inputs: [conv1, halves]}
  - {name: relu, op: relu}
  - {name: conv2, op: conv, channels: 4, kernel: 3, padding: 1}
  - {name: relu2, op: relu}
  - {name: gap, op: global_avg_pool}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: 2}
outputs: [fc]
"""


def left_half_net():
    model = build(LEFT_HALF, labels=["a", "b"])
    with torch.no_grad():
        for name, p in model.module.named_parameters():
            if name.startswith("conv"):
                p.copy_(torch.full_like(p, 0.1) if name.endswith("weight") else torch.zeros_like(p))
        model.module.fc.weight.copy_(torch.tensor([[1.0, 1, 1, 1], [-1.0, -1, -1, -1]]))
        model.module.fc.bias.zero_()
    return model


def test_default_layer_is_the_last_map_before_the_head():
    assert gradcam.default_layer(left_half_net()) == "relu2"


def test_class_map_lights_the_left_half_only():
    model = left_half_net()
    picture = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)) + 0.1
    cam = gradcam.class_map(model, picture, "relu2", target=0)
    assert cam.shape == (16, 8) and cam.min() > 0  # every unit of the map counts
    field = gradcam.field_of(model, "relu2")
    placed = gradcam.on_picture(cam, field, 16, 16)
    assert placed.shape == (16, 16)
    assert placed[:, :8].min() > 0  # the left half lights up
    assert np.all(placed[:, 8:] == 0)  # the right half, which no unit sees, stays dark
    # class b's score falls as the maps grow: its Grad-CAM is ReLU(negative) = 0
    assert np.all(gradcam.class_map(model, picture, "relu2", target=1) == 0)


def test_on_picture_places_units_at_their_field_centres(lenet):
    field = gradcam.field_of(lenet, "relu2")  # 10x10 map, jump 2, start 6.5
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[2, 7] = 1.0
    placed = gradcam.on_picture(cam, field, 32, 32)
    peak = np.unravel_index(placed.argmax(), placed.shape)
    # unit (2, 7) looks at 6.5 + 2·2 = 10.5 and 6.5 + 2·7 = 20.5: pixels 10-11, 20-21
    assert peak[0] in (10, 11) and peak[1] in (20, 21)
    assert placed[:4].max() == 0 and placed[:, 28:].max() == 0  # beyond the map's cover


def test_png_has_the_picture_and_one_tile_per_class(tmp_path, lenet):
    pictures = raw_batch(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(3)))
    grid = gradcam.save(lenet, pictures, tmp_path)
    assert grid.tiles == 4 and grid.path.name == "class_map.png"
    with Image.open(grid.path) as png:
        assert png.size == grid.pixels
    one = gradcam.save(lenet, pictures, tmp_path, target="7")
    assert one.tiles == 2


def test_unknown_class_is_a_user_error(tmp_path, lenet):
    pictures = raw_batch(torch.zeros(1, 1, 32, 32))
    with pytest.raises(UserError, match=r"--class seven: not one of the model's classes"):
        gradcam.save(lenet, pictures, tmp_path, target="seven")


def test_segmentation_net_with_open_sizes(tmp_path):
    """tinyseg (open H and W): the class maps of the classes it labels most pixels with."""
    from netc.compiler import zoo

    model = build(zoo.read("tinyseg"), labels=["background", "circle", "square", "triangle"])
    pictures = raw_batch(torch.rand(1, 3, 24, 28, generator=torch.Generator().manual_seed(4)))
    assert gradcam.default_layer(model) == "context.relu"
    grid = gradcam.save(model, pictures, tmp_path)
    assert 2 <= grid.tiles <= 4
    cam = gradcam.class_map(model, pictures.inputs, "context.relu", target=1)
    assert cam.shape == (6, 7)  # the map at a quarter of the picture's size

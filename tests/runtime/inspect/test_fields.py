"""Receptive-field boxes: the analysis's box, and a gradient probe that measures it."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from nets import build, raw_batch
from PIL import Image

from netc.errors import UserError
from netc.runtime.inspect import fields
from netc.runtime.inspect.activations import record

# Every way a window moves the field: padding, pooling, dilation, stride.
WINDOWS = """
name: windows
task: classification
inputs: {image: [1, 48, 48]}
layers:
  - {name: conv1, op: conv, channels: 2, kernel: 3, padding: 1}
  - {name: pool1, op: avg_pool, kernel: 2}
  - {name: conv2, op: conv, channels: 2, kernel: 3, dilation: 2}
  - {name: conv3, op: conv, channels: 2, kernel: 3, stride: 2, padding: 1}
  - {name: pool2, op: avg_pool, kernel: 3, stride: 1}
outputs: [pool2]
"""


def positive(model):
    """Every weight positive, every bias 0: no unit on the way is cut off, so the
    gradient reaches every pixel a unit depends on."""
    with torch.no_grad():
        for name, p in model.module.named_parameters():
            p.copy_(torch.full_like(p, 0.1) if name.endswith("weight") else torch.zeros_like(p))
    return model


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "conv3", "pool2"])
def test_probe_box_equals_the_analysis_box(layer):
    model = positive(build(WINDOWS))
    x = torch.rand(1, 1, 48, 48, generator=torch.Generator().manual_seed(0)) + 0.1
    shape = record(model, x, [layer])[layer].shape
    for i, j in [fields.centre_unit(shape), (1, shape[-1] - 2)]:
        box = fields.unit_box(fields.field_of(model, layer), i, j, 48, 48)
        probe = fields.support_box(fields.gradient(model, x, layer, i, j))
        assert probe == box.clipped(48, 48), (layer, i, j)


def test_box_follows_the_analysis_formula():
    model = build(WINDOWS)
    field = fields.field_of(model, "conv3")
    h = field.height
    # conv1: 3, jump 1, start 0; pool1: 4, jump 2, start 0.5; conv2 (k'=5): 12, jump 2,
    # start 4.5; conv3: 16, jump 4, start 4.5 + (1 - 1)·2 (padding 1 cancels the half-width)
    assert (h.size, h.jump, h.start) == (16, 4, Fraction(9, 2))
    box = fields.unit_box(field, 3, 5, 48, 48)
    assert box.centre == (Fraction(9, 2) + 3 * 4, Fraction(9, 2) + 5 * 4)
    assert box.size == (16, 16)


def test_probe_stays_inside_the_box_of_a_trained_style_net(lenet):
    x = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    for layer in ("conv1", "pool1", "conv2", "relu2", "pool2"):
        shape = record(lenet, x, [layer])[layer].shape
        i, j = fields.centre_unit(shape)
        top, left, bottom, right = fields.unit_box(
            fields.field_of(lenet, layer), i, j, 32, 32
        ).clipped(32, 32)
        probe = fields.support_box(fields.gradient(lenet, x, layer, i, j))
        assert probe is not None
        assert top <= probe[0] and left <= probe[1] and probe[2] <= bottom and probe[3] <= right


def test_overlay_png(tmp_path, lenet):
    pictures = raw_batch(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)))
    grid = fields.save(lenet, pictures, "conv2", tmp_path, "2,3")
    assert grid.path.name == "receptive_field_conv2.png"
    assert grid.tiles == 2
    with Image.open(grid.path) as png:
        assert png.size == grid.pixels
    assert np.asarray(Image.open(grid.path)).std() > 0


def test_position_outside_the_map_is_a_user_error(tmp_path, lenet):
    pictures = raw_batch(torch.zeros(1, 1, 32, 32))
    with pytest.raises(UserError, match=r"--position 10,0: outside the layer's 10x10 map"):
        fields.save(lenet, pictures, "conv2", tmp_path, "10,0")
    with pytest.raises(UserError, match="its output is not a feature map"):
        fields.save(lenet, pictures, "fc1", tmp_path)
    with pytest.raises(UserError, match="did you mean 'conv2'"):
        fields.save(lenet, pictures, "conv_2", tmp_path)

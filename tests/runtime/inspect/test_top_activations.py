"""Top activations: each crop is the analysis's receptive field around the strongest unit."""

from __future__ import annotations

import numpy as np
import torch
from nets import build, raw_batch
from PIL import Image

from netc.runtime.inspect import top_activations

# c2(i, j) = c1(2i+1, 2j+1) = x(2i+3, 2j+3): field 7 px, jump 2, start 3
PICKER = """
name: picker
task: classification
inputs: {image: [1, 24, 24]}
layers:
  - {name: c1, op: conv, channels: 1, kernel: 5}
  - {name: c2, op: conv, channels: 1, kernel: 3, stride: 2}
outputs: [c2]
"""

DOTS = [(3, 5), (11, 7), (19, 19), (7, 13), (15, 3)]  # odd: c2 samples odd pixels


def centre_taps(model):
    with torch.no_grad():
        for name, p in model.module.named_parameters():
            p.zero_()
            if name.endswith("weight"):
                k = p.shape[-1] // 2
                p[:, :, k, k] = 1.0
    return model


def dots() -> torch.Tensor:
    images = torch.zeros(len(DOTS), 1, 24, 24)
    for n, (r, c) in enumerate(DOTS):
        images[n, 0, r, c] = 0.5 + 0.1 * n  # later pictures are stronger
    return images


def test_crops_are_centred_where_the_analysis_says():
    model = centre_taps(build(PICKER))
    pictures = raw_batch(dots())
    (hits,) = top_activations.top_hits(model, pictures, "c2", [0], k=len(DOTS)).values()
    assert [h.picture for h in hits] == [4, 3, 2, 1, 0]  # strongest first
    for hit in hits:
        r, c = DOTS[hit.picture]
        i, j = hit.position
        assert (3 + 2 * i, 3 + 2 * j) == (r, c)  # the unit over the dot
        assert hit.box.centre == (r, c) and hit.box.size == (7, 7)
        crop = top_activations.crop(pictures.shown[hit.picture], hit.box)
        assert crop.shape == (7, 7)
        assert crop[3, 3] == dots()[hit.picture, 0, r, c]  # the dot sits in the middle


def test_a_box_past_the_edge_is_padded_white():
    model = centre_taps(build(PICKER))
    pictures = raw_batch(dots())
    hits = top_activations.top_hits(model, pictures, "c2", [0], k=5)[0]
    corner = next(h for h in hits if DOTS[h.picture] == (3, 5))
    crop = top_activations.crop(pictures.shown[corner.picture], corner.box)
    # box rows 0..6, columns 2..8: inside the picture; no padding needed
    assert corner.box.clipped(24, 24) == (0, 2, 6, 8)
    assert np.all(crop[np.arange(7) != 3] == 0)
    edge = top_activations.Hit(0, 0, (0, 0), 1.0, corner.box.__class__(-2, -2, 4, 4))
    padded = top_activations.crop(pictures.shown[0], edge.box)
    assert padded.shape == (7, 7) and np.all(padded[:2] == 1.0) and np.all(padded[:, :2] == 1.0)


def test_grid_has_a_row_per_channel_and_a_column_per_picture(tmp_path, lenet):
    pictures = raw_batch(torch.rand(20, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    grid = top_activations.save(lenet, pictures, "conv2", tmp_path, channels=3, k=5)
    assert (grid.rows, grid.columns, grid.tiles) == (3, 5, 15)
    with Image.open(grid.path) as png:
        assert png.size == grid.pixels
    fc = top_activations.save(lenet, pictures, "fc1", tmp_path, channels=2, k=4)
    assert (fc.rows, fc.columns) == (2, 4)  # whole pictures for a layer without a map

"""Masks as PNGs: the service's 8-bit answer, and mask files (palette PNGs whose pixel values
are classes, names in a text chunk)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from netc.runtime.datasets import load_dataset
from netc.serving.images import masks
from netc.serving.images.masks import read_mask

LABELS = ["background", "circle", "square", "triangle"]


def test_masks_encode_as_8_bit_png():
    mask = (np.arange(12, dtype=np.uint8) % 4).reshape(3, 4)
    decoded = Image.open(io.BytesIO(masks.encode_png(mask)))
    assert decoded.mode == "L" and decoded.format == "PNG"
    np.testing.assert_array_equal(np.asarray(decoded), mask)


def test_palette_is_pascal_vocs():
    colours = masks.palette()
    assert colours.shape == (256, 3)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert colours[15].tolist() == [192, 128, 128]  # VOC's "person"
    assert colours[20].tolist() == [0, 64, 128]  # VOC's "tv/monitor"
    assert tuple(colours[255]) == masks.IGNORE_COLOUR
    assert len({tuple(c) for c in colours}) == 256  # every class its own colour


def test_mask_png_keeps_class_indices_and_labels(tmp_path):
    mask = np.random.default_rng(0).integers(0, 4, size=(9, 13)).astype(np.uint8)
    mask[0, 0] = 255
    path = tmp_path / "m.png"
    path.write_bytes(masks.mask_png(mask, LABELS))
    with Image.open(path) as png:
        assert png.mode == "P" and png.size == (13, 9)
        assert png.convert("RGB").getpixel((1, 0)) == tuple(masks.palette()[mask[0, 1]])
    back, labels = read_mask(path)
    assert np.array_equal(back, mask) and labels == LABELS
    Image.fromarray(mask).save(tmp_path / "grey.png")  # a plain grey mask reads too
    assert read_mask(tmp_path / "grey.png")[1] is None


def test_a_mask_file_is_a_training_mask(tmp_path):
    """Masks written by netc infer can be fed back to netc train as a segmentation folder."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 2
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "masks" / "a.png").write_bytes(masks.mask_png(mask, LABELS))
    data = load_dataset(str(tmp_path))
    assert np.array_equal(data.targets[0].numpy(), mask)


def test_overlay_tints_classes_and_leaves_background():
    picture = np.full((3, 4, 4), 0.5, np.float32)
    mask = np.zeros((4, 4), np.uint8)
    mask[1, 2] = 1
    tinted = np.asarray(Image.open(io.BytesIO(masks.overlay_png(picture, mask, alpha=0.5))))
    assert tinted.shape == (4, 4, 3)
    assert tinted[0, 0].tolist() == [128, 128, 128]
    assert tinted[1, 2].tolist() == [128, 64, 64]  # half grey 128, half dark red (128, 0, 0)

"""Data sets load to the documented tensors; every bad input is a DataError naming the culprit."""

import numpy as np
import pytest
import torch
from helpers import assert_close
from PIL import Image

from netc.errors import ConfigError, DataError
from netc.runtime import datasets
from netc.runtime.datasets import ArrayDataset, load_dataset, make_shapes, resize, split


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode).save(path)
    return path


def rgb(h, w, colour):
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, 3))


def indexed(labels, task="classification"):
    """A data set whose image i is filled with the value i, so subsets can be traced."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    targets = torch.tensor(labels, dtype=torch.long)
    classes = [str(c) for c in range(int(targets.max()) + 1)]
    return ArrayDataset(images, targets, classes, task, "test")


def ids(dataset):
    return dataset.images[:, 0, 0, 0].long().tolist()


# --- built-ins --------------------------------------------------------------------------


def test_digits():
    data = load_dataset("digits")
    assert data.images.shape == (1797, 1, 8, 8) and data.images.dtype == torch.float32
    assert float(data.images.min()) == 0.0 and float(data.images.max()) == 1.0
    assert data.targets.dtype == torch.long and data.targets.shape == (1797,)
    assert data.classes == [str(d) for d in range(10)]
    assert sorted(data.targets.unique().tolist()) == list(range(10))
    assert data.task == "classification" and len(data) == 1797


def test_shapes_default():
    data = load_dataset("shapes")
    assert data.images.shape == (1200, 3, 64, 64) and data.targets.shape == (1200, 64, 64)
    assert data.task == "segmentation" and data.classes[0] == "background"
    assert len(data.classes) == 4
    assert 0.0 <= float(data.images.min()) and float(data.images.max()) <= 1.0


def test_shapes_deterministic_per_seed():
    a, b = make_shapes(count=32, size=32, seed=3), make_shapes(count=32, size=32, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets)
    c = make_shapes(count=32, size=32, seed=4)
    assert not torch.equal(a.images, c.images) and not torch.equal(a.targets, c.targets)


def test_shapes_masks_are_sane():
    data = make_shapes(count=200, size=48, seed=0)
    assert set(data.targets.unique().tolist()) == {0, 1, 2, 3}
    # The last shape drawn is never covered, so every image shows at least one shape.
    assert bool((data.targets != 0).flatten(1).any(dim=1).all())
    # Shapes are painted over the background: some object pixels in every class.
    for c in (1, 2, 3):
        assert int((data.targets == c).sum()) > 1000


# --- image folders ---------------------------------------------------------------------


def test_image_folder_round_trip(tmp_path):
    write_png(tmp_path / "cat" / "a.png", rgb(6, 8, (255, 0, 0)))
    write_png(tmp_path / "cat" / "b.png", rgb(6, 8, (0, 255, 0)))
    write_png(tmp_path / "ant" / "c.png", rgb(6, 8, (0, 0, 51)))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    data = load_dataset(str(tmp_path))
    assert data.classes == ["ant", "cat"]
    assert data.targets.tolist() == [0, 1, 1]
    assert data.images.shape == (3, 3, 6, 8)
    assert_close(data.images[0, :, 0, 0], [0, 0, 0.2], rtol=0, atol=1e-6, what="ant pixel")
    assert_close(data.images[1, :, 3, 3], [1, 0, 0], rtol=0, atol=1e-6, what="cat pixel")


def test_image_folder_grey_stays_one_channel_and_mixed_becomes_rgb(tmp_path):
    write_png(tmp_path / "grey" / "a" / "x.png", np.full((4, 4), 100), "L")
    write_png(tmp_path / "grey" / "b" / "y.png", np.full((4, 4), 200), "L")
    assert load_dataset(tmp_path / "grey").images.shape == (2, 1, 4, 4)
    write_png(tmp_path / "mixed" / "a" / "x.png", np.full((4, 4), 102), "L")
    write_png(tmp_path / "mixed" / "b" / "y.png", rgb(4, 4, (1, 2, 3)))
    mixed = load_dataset(tmp_path / "mixed")
    assert mixed.images.shape == (2, 3, 4, 4)
    assert_close(mixed.images[0, :, 0, 0], [0.4] * 3, rtol=0, atol=1e-6, what="grey as rgb")


def test_image_folder_resizes_to_most_common_size(tmp_path):
    write_png(tmp_path / "a" / "1.png", rgb(4, 6, (10, 10, 10)))
    write_png(tmp_path / "a" / "2.png", rgb(4, 6, (10, 10, 10)))
    write_png(tmp_path / "b" / "3.png", rgb(9, 9, (10, 10, 10)))
    data = load_dataset(tmp_path)
    assert data.images.shape == (3, 3, 4, 6)
    assert_close(data.images, torch.full_like(data.images, 10 / 255), rtol=0, atol=1e-6)


def test_image_folder_reads_jpeg(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(rgb(8, 8, (128, 128, 128)).copy()).save(tmp_path / "a" / "x.JPG")
    write_png(tmp_path / "b" / "y.png", rgb(8, 8, (0, 0, 0)))
    data = load_dataset(tmp_path)
    assert data.images.shape == (2, 3, 8, 8)
    assert abs(float(data.images[0].mean()) - 128 / 255) < 0.02


def test_many_files_decode_in_a_pool_with_the_same_result(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(datasets.PARALLEL_DECODE_MIN + 10):
        write_png(tmp_path / f"c{i % 3}" / f"{i:03d}.png", rng.integers(0, 256, (5, 5, 3)))
    pooled = load_dataset(tmp_path)
    monkeypatch.setattr(datasets, "PARALLEL_DECODE_MIN", 10**9)
    serial = load_dataset(tmp_path)
    assert torch.equal(pooled.images, serial.images)
    assert torch.equal(pooled.targets, serial.targets)


# --- segmentation folders --------------------------------------------------------------


def make_seg_folder(root, masks):
    for name, mask in masks.items():
        h, w = np.asarray(mask).shape
        write_png(root / "images" / f"{name}.png", rgb(h, w, (50, 100, 150)))
        write_png(root / "masks" / f"{name}.png", mask, "L")
    return root


def test_segmentation_folder_round_trip(tmp_path):
    a = np.array([[0, 1, 1], [2, 2, 255]])
    b = np.array([[0, 0, 0], [1, 1, 1]])
    data = load_dataset(make_seg_folder(tmp_path, {"a": a, "b": b}))
    assert data.task == "segmentation" and data.classes == ["0", "1", "2"]
    assert data.images.shape == (2, 3, 2, 3) and data.targets.dtype == torch.long
    assert data.targets.tolist() == [a.tolist(), b.tolist()]


def test_segmentation_folder_class_names_from_file(tmp_path):
    root = make_seg_folder(tmp_path, {"a": np.array([[0, 1], [1, 0]])})
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    assert load_dataset(root).classes == ["sky", "road", "car"]


def test_segmentation_label_beyond_classes_file_names_the_mask(tmp_path):
    root = make_seg_folder(tmp_path, {"a": np.array([[0, 1], [1, 0]]), "b": np.array([[3, 0]])})
    (root / "classes.txt").write_text("sky\nroad\n")
    with pytest.raises(DataError, match=r"b\.png.*label 3.*expected 0\.\.1 or 255"):
        load_dataset(root)


def test_segmentation_mask_size_mismatch_names_both_files(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb(4, 4, (0, 0, 0)))
    write_png(tmp_path / "masks" / "a.png", np.zeros((4, 5)), "L")
    with pytest.raises(DataError, match=r"masks/a\.png' is 4x5 .*images/a\.png' is 4x4"):
        load_dataset(tmp_path)


def test_segmentation_image_without_mask(tmp_path):
    make_seg_folder(tmp_path, {"a": np.zeros((2, 2))})
    write_png(tmp_path / "images" / "lonely.png", rgb(2, 2, (0, 0, 0)))
    with pytest.raises(DataError, match=r"lonely\.png' has no mask"):
        load_dataset(tmp_path)


def test_segmentation_colour_mask_is_refused(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb(2, 2, (0, 0, 0)))
    write_png(tmp_path / "masks" / "a.png", rgb(2, 2, (1, 1, 1)))
    with pytest.raises(DataError, match=r"masks/a\.png.*single-channel.*RGB"):
        load_dataset(tmp_path)


# --- .npz ------------------------------------------------------------------------------


def test_npz_uint8_classification(tmp_path):
    x = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([1, 0]), classes=np.array(["no", "yes"]))
    data = load_dataset(tmp_path / "d.npz")
    assert data.images.shape == (2, 1, 3, 4) and data.classes == ["no", "yes"]
    assert_close(data.images[:, 0], x / 255.0, rtol=0, atol=1e-7, what="scaled x")
    assert data.targets.tolist() == [1, 0] and data.task == "classification"


def test_npz_float_segmentation(tmp_path):
    x = np.random.default_rng(0).random((3, 2, 4, 4)).astype(np.float32)
    y = np.zeros((3, 4, 4), dtype=np.int64)
    y[0, 0, 0], y[1, 1, 1] = 4, 255
    np.savez(tmp_path / "s.npz", x=x, y=y)
    data = load_dataset(tmp_path / "s.npz")
    assert data.task == "segmentation" and data.classes == ["0", "1", "2", "3", "4"]
    assert torch.equal(data.images, torch.from_numpy(x))
    assert torch.equal(data.targets, torch.from_numpy(y))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros(2, np.int64)}, r"no array 'x' \(expected x and y, found: y\)"),
        ({"x": np.zeros((2, 3, 3), np.uint8)}, r"no array 'y'"),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(3, np.int64)},
            r"x has 2 samples but y has 3",
        ),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.array([0, -1])},
            r"y\[1\]: negative label -1",
        ),
        (
            {
                "x": np.zeros((2, 3, 3), np.uint8),
                "y": np.array([0, 2]),
                "classes": np.array(["a", "b"]),
            },
            r"y\[1\]: label 2 is outside the 2 classes \(expected 0\.\.1, found 2\)",
        ),
        ({"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros(2, np.float32)}, r"integer class"),
        ({"x": np.zeros((2, 3, 3), np.int32), "y": np.zeros(2, np.int64)}, r"uint8 or float"),
        ({"x": np.zeros((2, 8, 8, 3), np.uint8), "y": np.zeros(2, np.int64)}, r"\(N, H, W, C\)"),
        ({"x": np.zeros((0, 3, 3), np.uint8), "y": np.zeros(0, np.int64)}, r"no samples"),
        (
            {"x": np.zeros((2, 3, 3), np.uint8), "y": np.zeros((2, 3, 4), np.int64)},
            r"masks y are 3x4 but images x are 3x3",
        ),
    ],
)
def test_npz_bad_inputs_name_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(path)
    assert "bad.npz" in str(info.value)


def test_npz_that_is_not_an_archive(tmp_path):
    (tmp_path / "fake.npz").write_bytes(b"definitely not a zip")
    with pytest.raises(DataError, match=r"fake\.npz' is not a \.npz archive"):
        load_dataset(tmp_path / "fake.npz")


# --- other bad inputs ------------------------------------------------------------------


def test_missing_data_set():
    with pytest.raises(DataError, match=r"no data set 'nope': not a built-in \(digits, shapes\)"):
        load_dataset("nope")


def test_unsupported_file(tmp_path):
    (tmp_path / "data.csv").write_text("1,2,3")
    with pytest.raises(DataError, match=r"data\.csv.*unsupported file type '\.csv'"):
        load_dataset(tmp_path / "data.csv")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match=rf"'{tmp_path}' has no class sub-folders"):
        load_dataset(tmp_path)


def test_empty_class_folder(tmp_path):
    write_png(tmp_path / "a" / "x.png", rgb(2, 2, (0, 0, 0)))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder '.*/b' holds no PNG/JPEG images"):
        load_dataset(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    write_png(tmp_path / "a" / "good.png", rgb(2, 2, (0, 0, 0)))
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"cannot read image '.*broken\.png'"):
        load_dataset(tmp_path)


def test_truncated_image_is_named(tmp_path):
    good = write_png(
        tmp_path / "a" / "good.png", np.random.default_rng(0).integers(0, 255, (32, 32, 3))
    )
    (tmp_path / "a" / "cut.png").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cannot read image '.*cut\.png'"):
        load_dataset(tmp_path)


# --- split -----------------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_complete():
    data = indexed([i % 3 for i in range(60)])
    train, val = split(data, 0.25, seed=7)
    again_train, again_val = split(data, 0.25, seed=7)
    assert ids(train) == ids(again_train) and ids(val) == ids(again_val)
    assert len(val) == 15 and sorted(ids(train) + ids(val)) == list(range(60))
    assert ids(split(data, 0.25, seed=8)[1]) != ids(val)


def test_split_is_stratified():
    labels = [0] * 70 + [1] * 20 + [2] * 10
    train, val = split(indexed(labels), 0.2, seed=0)
    assert torch.bincount(val.targets).tolist() == [14, 4, 2]
    assert torch.bincount(train.targets).tolist() == [56, 16, 8]


def test_split_keeps_rare_classes_proportional():
    labels = [0] * 50 + [1] * 5 + [2] * 5
    val = split(indexed(labels), 0.1, seed=0)[1]
    counts = torch.bincount(val.targets, minlength=3).tolist()
    assert sum(counts) == 6 and counts[0] == 5 and counts[1] + counts[2] == 1


def test_split_zero_fraction_means_no_validation():
    data = indexed([0, 1, 0, 1])
    train, val = split(data, 0.0, seed=0)
    assert train is data and len(val) == 0 and val.images.shape == (0, 1, 2, 2)


def test_split_segmentation_is_random_but_seeded():
    data = make_shapes(count=20, size=8, seed=0)
    train, val = split(data, 0.3, seed=1)
    assert len(train) == 14 and len(val) == 6 and val.targets.shape == (6, 8, 8)
    assert torch.equal(val.images, split(data, 0.3, seed=1)[1].images)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_rejects_bad_fractions(fraction):
    with pytest.raises(ConfigError, match=r"training\.val_fraction"):
        split(indexed([0, 1]), fraction, seed=0)


# --- resize ----------------------------------------------------------------------------


def test_resize_images_bilinear():
    data = load_dataset("digits").subset(range(10))
    big = resize(data, (16, 20))
    assert big.images.shape == (10, 1, 16, 20) and torch.equal(big.targets, data.targets)
    expected = torch.nn.functional.interpolate(
        data.images, size=(16, 20), mode="bilinear", align_corners=False
    )
    assert_close(big.images, expected, rtol=0, atol=1e-6, what="bilinear")
    assert resize(data, (8, 8)) is data


def test_resize_masks_nearest():
    data = make_shapes(count=4, size=16, seed=0)
    up = resize(data, (32, 32))
    repeated = data.targets.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(up.targets, repeated)
    down = resize(data, (5, 7))
    assert down.targets.shape == (4, 5, 7) and down.targets.dtype == torch.long
    assert set(down.targets.unique().tolist()) <= set(data.targets.unique().tolist())


def test_resize_empty_and_bad_size():
    empty = make_shapes(count=4, size=16, seed=0).subset([])
    assert resize(empty, (8, 8)).targets.shape == (0, 8, 8)
    with pytest.raises(ConfigError, match=r"training\.input_size"):
        resize(empty, (0, 8))


def test_sixteen_bit_grey_trains_on_the_scale_it_is_served_at(tmp_path):
    """PIL's convert("L") clips 16-bit values above 255; training must read a 16-bit PNG
    as the server does (full range 65535), to 8-bit precision."""
    from netc.runtime.datasets import _decode_image
    from netc.serving.images.decode import decode_encoded

    values = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    trained, reason = _decode_image(str(path))
    served = decode_encoded(path.read_bytes())
    assert reason == "" and trained.shape == (8, 8, 1) and trained.max() > 200
    np.testing.assert_allclose(trained[..., 0] / 255.0, served[0], rtol=0, atol=1 / 255)

"""Preprocessing is fitted on the training split only; augmentation moves masks with images."""

import json

import pytest
import torch
from helpers import assert_close

from netc.errors import ConfigError, DataError
from netc.runtime.preprocess import (
    Augment,
    Preprocessing,
    balanced_sampler,
    fit_preprocessing,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- normalisation ---------------------------------------------------------------------


def test_mean_std_come_from_the_training_split_only():
    g = gen(0)
    train = torch.randn(200, 3, 5, 5, generator=g) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    train = train + torch.tensor([0.2, -1.0, 3.0]).view(1, 3, 1, 1)
    val = torch.randn(50, 3, 5, 5, generator=g) + 10.0
    pre = fit_preprocessing(train, normalize=True, pca_whitening=False)
    assert_close(pre.mean, train.mean(dim=(0, 2, 3)), rtol=0, atol=1e-5, what="mean")
    assert_close(pre.std, train.std(dim=(0, 2, 3), correction=0), rtol=1e-5, atol=0, what="std")
    out = pre.apply(train)
    assert_close(out.mean(dim=(0, 2, 3)), [0, 0, 0], rtol=0, atol=1e-5, what="normalised mean")
    assert_close(out.std(dim=(0, 2, 3), correction=0), [1, 1, 1], rtol=0, atol=1e-5, what="std")
    assert float(pre.apply(val).mean()) > 3.0  # validation data did not shift the statistics


def test_no_normalisation_is_the_identity():
    x = torch.rand(4, 2, 3, 3, generator=gen(1))
    pre = fit_preprocessing(x, normalize=False, pca_whitening=False)
    assert pre.mean == [0.0, 0.0] and pre.std == [1.0, 1.0]
    assert torch.equal(pre.apply(x), x)


def test_constant_channel_gets_unit_std():
    x = torch.zeros(3, 2, 4, 4)
    x[:, 1] = torch.rand(3, 4, 4, generator=gen(2))
    pre = fit_preprocessing(x, normalize=True, pca_whitening=False)
    assert pre.std[0] == 1.0 and torch.isfinite(pre.apply(x)).all()


def test_apply_single_image_resize_and_channel_check():
    pre = Preprocessing(mean=[0.5], std=[0.25], input_size=(4, 6))
    image = torch.full((1, 2, 3), 0.75)
    assert_close(pre.apply(image), torch.ones(1, 4, 6), rtol=0, atol=1e-6, what="single image")
    with pytest.raises(DataError, match=r"\(N, 1, H, W\), found \(2, 3, 4, 6\)"):
        pre.apply(torch.zeros(2, 3, 4, 6))


def test_fit_resizes_to_input_size_first():
    x = torch.rand(5, 1, 8, 8, generator=gen(3))
    pre = fit_preprocessing(x, normalize=True, pca_whitening=False, input_size=(16, 16))
    assert pre.input_size == (16, 16) and pre.apply(x).shape == (5, 1, 16, 16)


def test_fit_refuses_an_empty_split():
    with pytest.raises(DataError, match=r"non-empty .* found shape \(0, 1, 4, 4\)"):
        fit_preprocessing(torch.zeros(0, 1, 4, 4), normalize=True, pca_whitening=False)


# --- whitening -------------------------------------------------------------------------


def correlated(n, d, seed):
    """Gaussian samples with covariance eigenvalues between 1 and 4, in random directions."""
    g = gen(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    scales = torch.linspace(1.0, 2.0, d, dtype=torch.float64)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ (q * scales) @ q.T).float()


def test_zca_whitening_gives_identity_covariance():
    x = correlated(3000, 16, seed=4).view(3000, 1, 4, 4) + 0.3
    pre = fit_preprocessing(x, normalize=True, pca_whitening=True)
    assert pre.pca is not None and pre.pca.shape == (16, 16)
    assert_close(pre.pca, pre.pca.T, rtol=0, atol=1e-5, what="ZCA matrix is symmetric")
    flat = pre.apply(x).reshape(3000, -1).double()
    centred = flat - flat.mean(dim=0)
    cov = centred.T @ centred / len(flat)
    assert_close(cov, torch.eye(16), rtol=0, atol=0.03, what="whitened covariance")


def test_zca_refuses_large_inputs_naming_the_size():
    with pytest.raises(ConfigError, match=r"training\.pca_whitening.*found 3x64x64 = 12288"):
        fit_preprocessing(torch.rand(2, 3, 64, 64), normalize=True, pca_whitening=True)


def test_dict_round_trip_through_json():
    x = correlated(500, 12, seed=5).view(500, 3, 2, 2)
    pre = fit_preprocessing(x, normalize=True, pca_whitening=True, input_size=(2, 2))
    back = Preprocessing.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back.mean == pre.mean and back.std == pre.std and back.input_size == (2, 2)
    assert_close(back.apply(x), pre.apply(x), rtol=0, atol=1e-6, what="restored preprocessing")
    plain = Preprocessing([0.5], [0.5])
    assert Preprocessing.from_dict(json.loads(json.dumps(plain.to_dict()))) == plain


def test_from_dict_names_the_bad_entry():
    with pytest.raises(DataError, match=r"'std' must be a non-empty list"):
        Preprocessing.from_dict({"mean": [0.5]})
    with pytest.raises(DataError, match=r"mean has 2 channels but std has 1"):
        Preprocessing.from_dict({"mean": [0.5, 0.5], "std": [1.0]})


# --- augmentation ----------------------------------------------------------------------


def numbered_batch(n, h, w):
    """Images whose pixels are 1..h*w (distinct, never 0) and masks holding the same numbers."""
    grid = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w)
    images = grid.expand(n, 2, h, w).clone()
    return images, images[:, 0].long()


def shifted(x, dy, dx, fill):
    """x (..., H, W) moved by (dy, dx) with `fill` where nothing moved in; a loop reference."""
    out = torch.full_like(x, fill)
    h, w = x.shape[-2:]
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[..., i, j] = x[..., i - dy, j - dx]
    return out


def test_augment_is_deterministic_for_a_generator_state():
    images, masks = numbered_batch(16, 6, 7)
    augment = Augment(crop_padding=2, hflip=True)
    a = augment(images, masks, gen(9))
    b = augment(images, masks, gen(9))
    c = augment(images, masks, gen(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_augment_off_changes_nothing():
    images, masks = numbered_batch(4, 3, 3)
    out_images, out_masks = Augment()(images, masks, gen(0))
    assert torch.equal(out_images, images) and torch.equal(out_masks, masks)


def test_crop_shifts_by_at_most_the_padding_with_zero_and_ignore_fill():
    h, w, p = 5, 6, 2
    images, masks = numbered_batch(32, h, w)
    out_images, out_masks = Augment(crop_padding=p)(images, masks, gen(1))
    seen = set()
    for k in range(32):
        # Pixel value 1 sits at (0, 0) before the crop; find where it went.
        found = (out_images[k, 0] == 1).nonzero()
        matches = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if torch.equal(out_images[k], shifted(images[k], dy, dx, 0.0))
        ]
        assert len(matches) == 1, f"sample {k} is not a shift of its input (1 at {found.tolist()})"
        dy, dx = matches[0]
        assert torch.equal(out_masks[k], shifted(masks[k], dy, dx, 255))
        seen.add((dy, dx))
    assert len(seen) > 5


def test_flip_mirrors_images_and_masks_together():
    images, masks = numbered_batch(32, 4, 5)
    out_images, out_masks = Augment(hflip=True)(images, masks, gen(2))
    flipped = [torch.equal(out_images[k], images[k].flip(-1)) for k in range(32)]
    assert all(flipped[k] or torch.equal(out_images[k], images[k]) for k in range(32))
    assert 4 < sum(flipped) < 28
    assert torch.equal(out_masks, out_images[:, 0].long())


def test_crop_and_flip_keep_masks_aligned_with_images():
    images, masks = numbered_batch(64, 8, 8)
    out_images, out_masks = Augment(crop_padding=3, hflip=True)(images, masks, gen(3))
    expected = torch.where(out_images[:, 0] == 0, 255, out_images[:, 0].long())
    assert torch.equal(out_masks, expected)


def test_class_labels_pass_through():
    images, _ = numbered_batch(8, 4, 4)
    labels = torch.arange(8)
    out_images, out_labels = Augment(crop_padding=1, hflip=True)(images, labels, gen(4))
    assert torch.equal(out_labels, labels) and out_images.shape == images.shape


def test_negative_padding_is_a_config_error():
    with pytest.raises(ConfigError, match=r"crop_padding.*found -1"):
        Augment(crop_padding=-1)


# --- balanced sampling -----------------------------------------------------------------


def test_balanced_sampler_draws_classes_uniformly_and_reproducibly():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    drawn = list(balanced_sampler(labels, 6000, seed=0))
    counts = torch.bincount(labels[drawn], minlength=3).double() / len(drawn)
    assert_close(counts, [1 / 3] * 3, rtol=0, atol=0.03, what="class frequencies")
    assert drawn == list(balanced_sampler(labels, 6000, seed=0))
    assert drawn != list(balanced_sampler(labels, 6000, seed=1))


def test_balanced_sampler_needs_class_labels():
    with pytest.raises(ConfigError, match=r"training\.balanced_sampling"):
        balanced_sampler(torch.zeros(4, 2, 2, dtype=torch.long), 4, seed=0)

"""Pictures → model inputs and score maps → masks: decoding, limits, geometry, normalisation."""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, assert_fp32_close
from PIL import Image

from netc.runtime.preprocess import Preprocessing
from netc.serving import images
from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.model_info import ModelInfo, TensorSpec


def _encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array)
    if mode is not None:
        picture = picture.convert(mode)
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def _info(dims, *, mean=None, std=None, max_batch_size=8, name="m") -> ModelInfo:
    return ModelInfo(
        name=name,
        version="1",
        inputs=(TensorSpec("image", "FP32", tuple(dims)),),
        outputs=(TensorSpec("out", "FP32", (10,)),),
        max_batch_size=max_batch_size,
        preprocessing={
            "mean": mean,
            "std": std,
            "layout": "NCHW",
            "value_range": [0, 1],
            "channels": dims[-3] if len(dims) > 2 else None,
        },
    )


RNG = np.random.default_rng(0)
RGB = (RNG.random((7, 9, 3)) * 255).astype(np.uint8)


def test_png_and_jpeg_decode_to_chw_floats_in_0_1():
    decoded = images.decode_encoded(_encode(RGB))
    assert decoded.dtype == np.float32 and decoded.shape == (3, 7, 9)
    assert_close(decoded, RGB.transpose(2, 0, 1) / 255, rtol=0, atol=1e-7)
    grey = images.decode_encoded(_encode(RGB[..., 0]))
    assert grey.shape == (1, 7, 9)
    jpeg = images.decode_encoded(_encode(RGB, "JPEG"))
    assert jpeg.shape == (3, 7, 9) and 0 <= jpeg.min() and jpeg.max() <= 1


def test_palette_alpha_and_16_bit_pictures_decode():
    assert images.decode_encoded(_encode(RGB, mode="P")).shape == (3, 7, 9)
    rgba = images.decode_encoded(_encode(np.dstack([RGB, np.full((7, 9), 128, np.uint8)])))
    assert rgba.shape == (4, 7, 9)
    assert_close(images.to_channels(rgba, 3), RGB.transpose(2, 0, 1) / 255, rtol=0, atol=1e-7)
    deep = np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000
    assert_close(images.decode_encoded(_encode(deep))[0], deep / 65535, rtol=0, atol=1e-6)


def test_undecodable_and_truncated_bytes_are_invalid_requests():
    with pytest.raises(InvalidRequest, match="expected PNG or JPEG file contents"):
        images.decode_encoded(b"certainly not a picture")
    with pytest.raises(InvalidRequest, match="empty"):
        images.decode_encoded(b"")
    gif = io.BytesIO()
    Image.fromarray(RGB).save(gif, format="GIF")
    with pytest.raises(InvalidRequest, match="expected PNG or JPEG"):
        images.decode_encoded(gif.getvalue())
    with pytest.raises(InvalidRequest, match="cannot decode the PNG image"):
        images.decode_encoded(_encode(RGB)[:60])


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    with pytest.raises(InvalidRequest, match=r"9x7 = 0.0 megapixels; .* at most 5e-05"):
        images.decode_encoded(_encode(RGB), max_pixels=50)
    monkeypatch.setattr(images, "MAX_PIXELS", 62)  # the server's setting, read at each call
    with pytest.raises(InvalidRequest, match="megapixels"):
        images.decode_tensor([7, 9, 3], "HWC", "UINT8", RGB.tobytes())
    assert images.decode_encoded(_encode(RGB), max_pixels=63).shape == (3, 7, 9)


def test_raw_tensors_in_every_layout_and_datatype():
    chw = RGB.transpose(2, 0, 1)
    expected = chw / 255
    hwc = images.decode_tensor([7, 9, 3], "HWC", "UINT8", RGB.tobytes())
    assert_close(hwc, expected, rtol=0, atol=1e-7)
    chw_default = images.decode_tensor([3, 7, 9], "", "", np.ascontiguousarray(chw).tobytes())
    assert_close(chw_default, expected, rtol=0, atol=1e-7)
    floats = expected.astype("<f4")
    assert_close(
        images.decode_tensor([3, 7, 9], "CHW", "FP32", floats.tobytes()), floats, rtol=0, atol=0
    )
    assert images.decode_tensor([7, 9], "", "UINT8", RGB[..., 0].tobytes()).shape == (1, 7, 9)
    with pytest.raises(InvalidRequest, match="needs 189 bytes of data, found 188"):
        images.decode_tensor([3, 7, 9], "CHW", "UINT8", chw.tobytes()[:-1])
    with pytest.raises(InvalidRequest, match="expected CHW or HWC"):
        images.decode_tensor([3, 7, 9], "NCHW", "UINT8", chw.tobytes())
    with pytest.raises(InvalidRequest, match="expected UINT8"):
        images.decode_tensor([3, 7, 9], "CHW", "INT64", chw.tobytes())
    with pytest.raises(InvalidRequest, match="NaN"):
        images.decode_tensor([1, 1, 1], "CHW", "FP32", np.float32("nan").tobytes())
    for wrong, shown in ((255.0, "0..255"), (3e38, "0..3e\\+38"), (-0.5, "-0.5..0")):
        values = np.array([0.0, wrong], "<f4") if wrong > 0 else np.array([wrong, 0.0], "<f4")
        with pytest.raises(InvalidRequest, match=f"values lie in {shown}.*expected 0..1"):
            images.decode_tensor([1, 1, 2], "CHW", "FP32", values.tobytes())


def test_a_sideways_photo_is_decoded_as_viewers_show_it():
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :5] = 255  # a white stripe at the stored picture's left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif, quality=95)
    shown = images.decode_encoded(buffer.getvalue())
    assert shown.shape == (3, 20, 10)  # upright: 10 wide, 20 tall
    assert shown[:, :5].mean() > 0.9 and shown[:, -5:].mean() < 0.1  # the stripe on top


def test_channel_conversion_follows_pillow():
    rgb = RGB.transpose(2, 0, 1) / np.float32(255)
    grey = images.to_channels(rgb, 1)
    pillow = np.asarray(Image.fromarray(RGB).convert("L")) / 255
    assert_close(grey[0], pillow, rtol=0, atol=1 / 255 + 1e-6)
    assert images.to_channels(grey, 3).shape == (3, 7, 9)
    with pytest.raises(InvalidRequest, match="image has 5 channels; the model expects 3"):
        images.to_channels(np.zeros((5, 2, 2), np.float32), 3)


@pytest.mark.parametrize("size", [(32, 32), (5, 13), (3, 3)])
def test_resize_is_torch_bilinear_without_antialiasing(size):
    x = RNG.random((3, 11, 17), dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False
    )[0]
    assert_fp32_close(images.resize(x, size), expected)


def test_prepare_matches_training_preprocessing_for_a_fixed_size_model():
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    picture = RNG.random((3, 45, 61), dtype=np.float32)
    prepared = images.prepare(picture, _info((3, 32, 32), mean=mean, std=std))
    reference = Preprocessing(mean=mean, std=std, input_size=(32, 32)).apply(
        torch.from_numpy(picture)
    )
    assert prepared.original == (45, 61) and prepared.content == (32, 32)
    assert prepared.tensor.shape == (1, 3, 32, 32) and prepared.tensor.dtype == np.float32
    assert_fp32_close(prepared.tensor[0], reference)


def test_prepare_converts_channels_and_skips_missing_normalisation():
    picture = RNG.random((3, 8, 8), dtype=np.float32)
    prepared = images.prepare(picture, _info((1, 1, -1, -1), max_batch_size=0))
    assert prepared.tensor.shape == (1, 1, 8, 8)
    assert_close(prepared.tensor[0], images.to_channels(picture, 1), rtol=0, atol=0)


def test_models_the_service_cannot_feed_are_unsupported():
    with pytest.raises(Unsupported, match="needs an image input"):
        images.image_input(_info((3, 32)))
    with pytest.raises(Unsupported, match=r"std .* does not fit 3 channels"):
        images.image_input(_info((3, 8, 8), std=[1.0, 2.0]))


def test_size_rules_parse_netc_dimensions_only():
    assert images.size_rule("4*(H//4)", "H")(50) == 48
    assert images.size_rule("(H-28)//4", "H")(60) == 8
    assert images.size_rule("W", "W")(9) == 9
    for foreign in ("unk__12", "H*W", "__import__('os')", "H**2", "W//2", 7, None):
        assert images.size_rule(foreign, "H") is None
    assert images.size_rule("H//2", 32) is None  # a fixed input dimension
    assert images.fitted_size(50, images.size_rule("4*(H//4)", "H")) == 52
    assert images.fitted_size(60, images.size_rule("(H-28)//4", "H")) == 60
    with pytest.raises(InvalidRequest, match="too small for the model: expected at least 32"):
        images.fitted_size(20, images.size_rule("(H-28)//4", "H"))


def test_padding_round_trip_returns_a_mask_of_the_pictures_size():
    """An identity 'model' on a padded picture: the mask is the picture's own argmax."""
    scores = RNG.random((4, 50, 70), dtype=np.float32)
    rules = (images.size_rule("4*(H//4)", "H"), images.size_rule("4*(W//4)", "W"))
    prepared = images.prepare(
        scores,
        images.ImageInput("x", np.dtype(np.float32), 4, (None, None), None, None),
        rules=rules,
    )
    assert prepared.tensor.shape == (1, 4, 52, 72) and prepared.content == (50, 70)
    assert_close(
        prepared.tensor[0, :, 50:, :70], np.repeat(scores[:, -1:], 2, axis=1), rtol=0, atol=0
    )
    mask, probs = images.dense_scores(prepared.tensor[0], prepared, want_scores=True)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, scores.argmax(axis=0))
    assert_fp32_close(probs, torch.softmax(torch.from_numpy(scores), 0))


def test_the_pixel_limit_counts_the_padding_the_model_runs_on():
    rules = (images.size_rule("4*(H//4)", "H"), images.size_rule("4*(W//4)", "W"))
    spec = images.ImageInput("x", np.dtype(np.float32), 1, (None, None), None, None)
    thin = np.zeros((1, 1, 60), np.float32)  # 60 pixels, run as 4 x 60 = 240
    with pytest.raises(InvalidRequest, match=r"60x1; the model runs it padded to 60x4"):
        images.prepare(thin, spec, rules=rules, max_pixels=239)
    assert images.prepare(thin, spec, rules=rules, max_pixels=240).tensor.shape == (1, 1, 4, 60)


def test_pixel_counts_come_from_headers_alone():
    from netc.protos.generated import vision_pb2

    png = vision_pb2.Image(encoded=_encode(RGB))
    assert images.pixel_count(png) == 63
    hwc = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[7, 9, 3], layout="HWC"))
    chw = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[3, 7, 9]))
    grey = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[7, 9]))
    assert [images.pixel_count(i) for i in (hwc, chw, grey)] == [63, 63, 63]
    for unreadable in (vision_pb2.Image(encoded=b"junk"), vision_pb2.Image()):
        assert images.pixel_count(unreadable) == 0  # decoding says what is wrong


def test_coarse_score_maps_are_sampled_through_stride_and_offset():
    """Output pixel i looks at input offset + i·stride: a map of those centres reads back
    each pixel's own coordinate (inside the covered range)."""
    stride, offset, height = 4.0, 15.5, 60
    prepared = images.Prepared(
        np.zeros((1, 1, height, height), np.float32), (height, height), (height, height)
    )
    centres = offset + stride * np.arange(8, dtype=np.float32)  # (60 - 28)//4 = 8 outputs
    output = np.stack([np.broadcast_to(centres[:, None], (8, 8))])
    scale, shift = images.output_mapping(prepared, (8, 8), (stride, stride), (offset, offset))
    sampled = images.resample(output, (height, height), scale, shift)[0]
    inside = np.arange(16, 44)
    assert_close(sampled[inside, 0], inside, rtol=0, atol=1e-4)
    assert sampled[:15].max() == centres[0] and sampled[45:].min() == centres[-1]


def test_scores_pass_through_when_already_probabilities():
    p = np.array([0.7, 0.2, 0.1], np.float32)
    assert images.probabilities(p) is p or np.array_equal(images.probabilities(p), p)
    logits = np.array([1.0, 2.0, 3.0], np.float32)
    assert_close(
        images.probabilities(logits),
        torch.softmax(torch.from_numpy(logits), 0),
        rtol=1e-6,
        atol=1e-7,
    )


def test_masks_encode_as_8_bit_png():
    mask = (np.arange(12, dtype=np.uint8) % 4).reshape(3, 4)
    decoded = Image.open(io.BytesIO(images.encode_png(mask)))
    assert decoded.mode == "L" and decoded.format == "PNG"
    np.testing.assert_array_equal(np.asarray(decoded), mask)

"""Pictures → float32 (C, H, W) in [0, 1]: formats, limits, tensors, orientation, channels."""

import io

import numpy as np
import pytest
from helpers import assert_close
from PIL import Image

from netc.serving.errors import InvalidRequest
from netc.serving.images import decode


def _encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array)
    if mode is not None:
        picture = picture.convert(mode)
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


RNG = np.random.default_rng(0)
RGB = (RNG.random((7, 9, 3)) * 255).astype(np.uint8)


def test_png_and_jpeg_decode_to_chw_floats_in_0_1():
    decoded = decode.decode_encoded(_encode(RGB))
    assert decoded.dtype == np.float32 and decoded.shape == (3, 7, 9)
    assert_close(decoded, RGB.transpose(2, 0, 1) / 255, rtol=0, atol=1e-7)
    grey = decode.decode_encoded(_encode(RGB[..., 0]))
    assert grey.shape == (1, 7, 9)
    jpeg = decode.decode_encoded(_encode(RGB, "JPEG"))
    assert jpeg.shape == (3, 7, 9) and 0 <= jpeg.min() and jpeg.max() <= 1


def test_palette_alpha_and_16_bit_pictures_decode():
    assert decode.decode_encoded(_encode(RGB, mode="P")).shape == (3, 7, 9)
    rgba = decode.decode_encoded(_encode(np.dstack([RGB, np.full((7, 9), 128, np.uint8)])))
    assert rgba.shape == (4, 7, 9)
    assert_close(decode.to_channels(rgba, 3), RGB.transpose(2, 0, 1) / 255, rtol=0, atol=1e-7)
    deep = np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000
    assert_close(decode.decode_encoded(_encode(deep))[0], deep / 65535, rtol=0, atol=1e-6)


def test_undecodable_and_truncated_bytes_are_invalid_requests():
    with pytest.raises(InvalidRequest, match="expected PNG or JPEG file contents"):
        decode.decode_encoded(b"certainly not a picture")
    with pytest.raises(InvalidRequest, match="empty"):
        decode.decode_encoded(b"")
    gif = io.BytesIO()
    Image.fromarray(RGB).save(gif, format="GIF")
    with pytest.raises(InvalidRequest, match="expected PNG or JPEG"):
        decode.decode_encoded(gif.getvalue())
    with pytest.raises(InvalidRequest, match="cannot decode the PNG image"):
        decode.decode_encoded(_encode(RGB)[:60])


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    with pytest.raises(InvalidRequest, match=r"9x7 = 0.0 megapixels; .* at most 5e-05"):
        decode.decode_encoded(_encode(RGB), max_pixels=50)
    monkeypatch.setattr(decode, "MAX_PIXELS", 62)  # the server's setting, read at each call
    with pytest.raises(InvalidRequest, match="megapixels"):
        decode.decode_tensor([7, 9, 3], "HWC", "UINT8", RGB.tobytes())
    assert decode.decode_encoded(_encode(RGB), max_pixels=63).shape == (3, 7, 9)


def test_raw_tensors_in_every_layout_and_datatype():
    chw = RGB.transpose(2, 0, 1)
    expected = chw / 255
    hwc = decode.decode_tensor([7, 9, 3], "HWC", "UINT8", RGB.tobytes())
    assert_close(hwc, expected, rtol=0, atol=1e-7)
    chw_default = decode.decode_tensor([3, 7, 9], "", "", np.ascontiguousarray(chw).tobytes())
    assert_close(chw_default, expected, rtol=0, atol=1e-7)
    floats = expected.astype("<f4")
    assert_close(
        decode.decode_tensor([3, 7, 9], "CHW", "FP32", floats.tobytes()), floats, rtol=0, atol=0
    )
    assert decode.decode_tensor([7, 9], "", "UINT8", RGB[..., 0].tobytes()).shape == (1, 7, 9)
    with pytest.raises(InvalidRequest, match="needs 189 bytes of data, found 188"):
        decode.decode_tensor([3, 7, 9], "CHW", "UINT8", chw.tobytes()[:-1])
    with pytest.raises(InvalidRequest, match="expected CHW or HWC"):
        decode.decode_tensor([3, 7, 9], "NCHW", "UINT8", chw.tobytes())
    with pytest.raises(InvalidRequest, match="expected UINT8"):
        decode.decode_tensor([3, 7, 9], "CHW", "INT64", chw.tobytes())
    with pytest.raises(InvalidRequest, match="NaN"):
        decode.decode_tensor([1, 1, 1], "CHW", "FP32", np.float32("nan").tobytes())
    for wrong, shown in ((255.0, "0..255"), (3e38, "0..3e\\+38"), (-0.5, "-0.5..0")):
        values = np.array([0.0, wrong], "<f4") if wrong > 0 else np.array([wrong, 0.0], "<f4")
        with pytest.raises(InvalidRequest, match=f"values lie in {shown}.*expected 0..1"):
            decode.decode_tensor([1, 1, 2], "CHW", "FP32", values.tobytes())


def test_a_sideways_photo_is_decoded_as_viewers_show_it():
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :5] = 255  # a white stripe at the stored picture's left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="JPEG", exif=exif, quality=95)
    shown = decode.decode_encoded(buffer.getvalue())
    assert shown.shape == (3, 20, 10)  # upright: 10 wide, 20 tall
    assert shown[:, :5].mean() > 0.9 and shown[:, -5:].mean() < 0.1  # the stripe on top


def test_channel_conversion_follows_pillow():
    rgb = RGB.transpose(2, 0, 1) / np.float32(255)
    grey = decode.to_channels(rgb, 1)
    pillow = np.asarray(Image.fromarray(RGB).convert("L")) / 255
    assert_close(grey[0], pillow, rtol=0, atol=1 / 255 + 1e-6)
    assert decode.to_channels(grey, 3).shape == (3, 7, 9)
    with pytest.raises(InvalidRequest, match="image has 5 channels; the model expects 3"):
        decode.to_channels(np.zeros((5, 2, 2), np.float32), 3)


def test_pixel_counts_come_from_headers_alone():
    from netc.protos.generated import vision_pb2

    png = vision_pb2.Image(encoded=_encode(RGB))
    assert decode.pixel_count(png) == 63
    hwc = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[7, 9, 3], layout="HWC"))
    chw = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[3, 7, 9]))
    grey = vision_pb2.Image(tensor=vision_pb2.Tensor(shape=[7, 9]))
    assert [decode.pixel_count(i) for i in (hwc, chw, grey)] == [63, 63, 63]
    for unreadable in (vision_pb2.Image(encoded=b"junk"), vision_pb2.Image()):
        assert decode.pixel_count(unreadable) == 0  # decoding says what is wrong

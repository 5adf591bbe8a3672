"""Pictures as a request brings them → float32 (C, H, W) in [0, 1].

PNG/JPEG bytes (`decode_encoded`) or a raw pixel tensor (`decode_tensor`), within
the server's pixel budget (`MAX_PIXELS`, checked from the header before decoding);
`to_channels` then gives the model's channel count (grey ↔ RGB, alpha dropped).
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from netc.serving.errors import InvalidRequest

MAX_PIXELS = 4096 * 4096
"""The most pixels (H·W) one request may bring, over all its pictures and as the model
runs them (after padding); the server may change it. Over it: INVALID_ARGUMENT. A dense
model needs ~200 bytes a pixel while it runs (tinyseg: 2.7 GiB at 4000x4000)."""

FORMATS = ("PNG", "JPEG")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_TENSOR_TYPES: dict[str, np.dtype] = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}


def pixel_limit(max_pixels: int | None) -> int:
    return MAX_PIXELS if max_pixels is None else max_pixels


def _check_pixels(height: int, width: int, max_pixels: int | None) -> None:
    limit = pixel_limit(max_pixels)
    if height * width > limit:
        raise InvalidRequest(
            f"image is {width}x{height} = {height * width / 1e6:.1f} megapixels; this server "
            f"accepts at most {limit / 1e6:g} megapixels (send a smaller image)"
        )


def pixel_count(image: Any) -> int:
    """H·W of a vision `Image` from its header alone (0 when it cannot be read: decoding
    then says what is wrong), to budget a request's pictures before decoding any."""
    try:
        if image.WhichOneof("data") == "encoded":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                width, height = Image.open(io.BytesIO(image.encoded), formats=FORMATS).size
            return width * height
        height, width = _tensor_size([int(d) for d in image.tensor.shape], image.tensor.layout)
        return max(0, height * width)
    except Exception:  # anything unreadable: the full decode reports it
        return 0


def decode_encoded(data: bytes, *, max_pixels: int | None = None) -> np.ndarray:
    """PNG or JPEG file contents → float32 (C, H, W) in [0, 1]; C is 1, 2, 3 or 4."""
    if not data:
        raise InvalidRequest("image is empty: expected PNG or JPEG file contents")
    kind = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            kind = f"{picture.format} image"
            _check_pixels(picture.height, picture.width, max_pixels)
            picture.load()
            # a phone's JPEG stored sideways: answer in the orientation viewers show
            picture = ImageOps.exif_transpose(picture)
    except Image.UnidentifiedImageError:
        raise InvalidRequest(
            f"cannot decode the image ({len(data)} bytes, starting "
            f"{data[:8]!r}): expected PNG or JPEG file contents"
        ) from None
    except Image.DecompressionBombError as exc:
        raise InvalidRequest(f"image too large to decode: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise InvalidRequest(
            f"cannot decode the {kind}: {exc} (expected a complete PNG or JPEG file)"
        ) from None
    return _pixels(picture)


def _pixels(picture: Image.Image) -> np.ndarray:
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # 16-bit (or wider) grey
        scale = 1.0 if mode == "F" else 65535.0
        grey = np.asarray(picture, dtype=np.float32) / scale
        return np.clip(grey, 0.0, 1.0)[None]
    if mode == "P":
        picture = picture.convert("RGBA" if "transparency" in picture.info else "RGB")
    elif mode == "1":
        picture = picture.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, ...
        picture = picture.convert("RGB")
    array = np.asarray(picture, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return array.astype(np.float32) / 255.0


def _tensor_size(shape: list[int], layout: str) -> tuple[int, int]:
    """(H, W) of a pixel tensor: [H, W], [C, H, W] (CHW, the default) or [H, W, C]."""
    if len(shape) == 2:
        return shape[0], shape[1]
    if (layout or "CHW").upper() == "HWC":
        return shape[0], shape[1]
    return shape[1], shape[2]


def decode_tensor(
    shape, layout: str, datatype: str, data: bytes, *, max_pixels: int | None = None
) -> np.ndarray:
    """Raw pixels (the vision service's `Tensor`) → float32 (C, H, W) in [0, 1]."""
    shape = [int(d) for d in shape]
    layout, datatype = (layout or "CHW").upper(), (datatype or "UINT8").upper()
    if layout not in ("CHW", "HWC"):
        raise InvalidRequest(f"tensor layout '{layout}': expected CHW or HWC")
    if datatype not in _TENSOR_TYPES:
        raise InvalidRequest(
            f"tensor datatype '{datatype}': expected UINT8 (0..255) or FP32 (0..1)"
        )
    if len(shape) not in (2, 3) or any(d <= 0 for d in shape):
        raise InvalidRequest(
            f"tensor shape {shape}: expected [C, H, W], [H, W, C] or [H, W] with positive sizes"
        )
    if len(shape) == 2:
        shape, layout = [1, *shape], "CHW"
    height, width = _tensor_size(shape, layout)
    _check_pixels(height, width, max_pixels)
    dtype = _TENSOR_TYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow to 0
    if len(data) != expected:
        raise InvalidRequest(
            f"tensor of shape {shape} and datatype {datatype} needs "
            f"{expected} bytes of data, found {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(shape)
    if layout == "HWC":
        array = array.transpose(2, 0, 1)
    if datatype == "UINT8":
        return array.astype(np.float32) / 255.0
    if not np.isfinite(array).all():
        raise InvalidRequest("FP32 tensor holds NaN or infinite values: expected 0..1")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:  # 0..255 floats would saturate; huge ones give NaN scores
        raise InvalidRequest(
            f"FP32 tensor values lie in {low:g}..{high:g}: expected 0..1 "
            "(send UINT8 for 0..255 pixels)"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def decode(image: Any, *, max_pixels: int | None = None) -> np.ndarray:
    """A vision `Image` message (encoded bytes or a `Tensor`) → float32 (C, H, W)."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return decode_encoded(image.encoded, max_pixels=max_pixels)
    if kind == "tensor":
        t = image.tensor
        return decode_tensor(t.shape, t.layout, t.datatype, t.data, max_pixels=max_pixels)
    raise InvalidRequest("image has no data: set 'encoded' (PNG/JPEG bytes) or 'tensor'")


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Grey → RGB by repetition, RGB → grey by luminance; an alpha channel is dropped
    unless the model takes it."""
    have = image.shape[0]
    if have == channels:
        return image
    if have in (2, 4):  # LA, RGBA
        image, have = image[:-1], have - 1
    if have == channels:
        return image
    if have == 1:
        return np.repeat(image, channels, axis=0)
    if have == 3 and channels == 1:
        return np.tensordot(_LUMA, image, axes=1)[None].astype(np.float32)
    raise InvalidRequest(
        f"image has {image.shape[0]} channels; the model expects "
        f"{channels} (grey, RGB or RGBA images convert automatically)"
    )

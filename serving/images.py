"""Pictures → model inputs, and model score maps → the picture's own size.

Decoding turns PNG/JPEG bytes or a raw pixel tensor into float32 (C, H, W)
in [0, 1] with the model's channel count (grey ↔ RGB, alpha dropped).
`prepare` then applies the model's own preprocessing, read from its ONNX
metadata (`netc.preprocessing`), exactly as training did:

1. resize (bilinear, no antialiasing, like `torch.nn.functional.interpolate`
   with `align_corners=False`) to the model's input size when it is fixed;
   models with open H and W keep the picture's size, padded at the bottom
   and right (edge pixels repeated) when the model needs a size multiple;
2. `x = (x - mean) / std` per channel, when the metadata has them.

Every geometric step is an affine map between pixel centres, `src = a·dst + b`,
so mapping a score map back onto the picture (`dense_scores`) composes them:
picture → model input → model output (its `netc.output_stride`/`offset`).
"""

from __future__ import annotations

import ast
import io
import json
import math
import operator
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.model_info import ModelInfo

MAX_PIXELS = 4096 * 4096
"""The most pixels (H·W) one request may bring, over all its pictures and as the model
runs them (after padding); the server may change it. Over it: INVALID_ARGUMENT. A dense
model needs ~200 bytes a pixel while it runs (tinyseg: 2.7 GiB at 4000x4000)."""

FORMATS = ("PNG", "JPEG")
MAX_PAD = 64  # the most rows/columns added to reach a size the model accepts
CHUNK_VALUES = 1 << 24  # score values resampled at a time (bounds memory for big pictures)

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as Pillow's "L"
_TENSOR_TYPES = {"UINT8": np.dtype("<u1"), "FP32": np.dtype("<f4")}


# ---------------------------------------------------------------------------- decoding


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
            picture = Image.open(io.BytesIO(data), formats=FORMATS)
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


# ---------------------------------------------------------------------------- geometry


def _axis(n_in: int, n_out: int, a: float, b: float):
    """Source indices and weights of bilinear sampling at src = a·dst + b (clamped)."""
    src = np.clip(np.arange(n_out, dtype=np.float64) * a + b, 0.0, n_in - 1)
    low = np.floor(src).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low).astype(np.float32)


def resample(
    x: np.ndarray, size: tuple[int, int], scale: tuple[float, float], shift: tuple[float, float]
) -> np.ndarray:
    """Bilinear sampling of x (..., h, w) at src = scale·dst + shift, per axis → (..., H, W).

    Sources outside the map take the edge value (torch's `align_corners=False`
    rule); `resize` is the case scale = in/out, shift = scale/2 - 1/2.
    """
    top, bottom, wy = _axis(x.shape[-2], size[0], scale[0], shift[0])
    wy = wy[:, None]
    x = x[..., top, :] * (1 - wy) + x[..., bottom, :] * wy
    left, right, wx = _axis(x.shape[-1], size[1], scale[1], shift[1])
    return (x[..., left] * (1 - wx) + x[..., right] * wx).astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (..., h, w) to size, as `F.interpolate(align_corners=False)`."""
    scale = [n_in / n_out for n_in, n_out in zip(x.shape[-2:], size)]
    return resample(x, size, scale, [s / 2 - 0.5 for s in scale])


_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


def size_rule(expression: Any, variable: Any) -> Callable[[int], int] | None:
    """An output size as a function of the input size, from symbolic ONNX dimensions.

    netc writes open output sizes as integer expressions of the input's
    dimension name, e.g. '4*(H//4)' or '(H-28)//4' for an input dimension 'H'.
    None when the output dimension is not such an expression (an int, or a
    name another exporter made up).
    """
    if not isinstance(expression, str) or not isinstance(variable, str):
        return None
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def check(node) -> bool:
        if isinstance(node, ast.BinOp):
            return type(node.op) in _OPS and check(node.left) and check(node.right)
        if isinstance(node, ast.UnaryOp):
            return isinstance(node.op, ast.USub) and check(node.operand)
        if isinstance(node, ast.Constant):
            return isinstance(node.value, int)
        return isinstance(node, ast.Name)

    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if names != {variable} or not check(tree):
        return None

    def evaluate(node, size: int) -> int:
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](evaluate(node.left, size), evaluate(node.right, size))
        if isinstance(node, ast.UnaryOp):
            return -evaluate(node.operand, size)
        return node.value if isinstance(node, ast.Constant) else size

    return lambda size: evaluate(tree, size)


def fitted_size(size: int, rule: Callable[[int], int] | None) -> int:
    """The input size to run at: the smallest >= size whose output has the same size
    (so a dense model predicts every pixel), else size itself.

    InvalidRequest when the model's output would be empty at this size.
    """
    if rule is None:
        return size
    for padded in range(size, size + MAX_PAD + 1):
        if rule(padded) == padded:
            return padded
    if rule(size) < 1:
        smallest = next((n for n in range(size, 1 << 16) if rule(n) >= 1), None)
        raise InvalidRequest(
            f"image side {size} is too small for the model: expected at least {smallest} pixels"
        )
    return size


# ---------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ImageInput:
    """How a model takes a picture: its input tensor, channels, fixed size (or None)."""

    name: str
    dtype: np.dtype
    channels: int
    size: tuple[int | None, int | None]  # fixed H and W, None where open
    mean: np.ndarray | None
    std: np.ndarray | None
    value_range: tuple[float, float] = (0.0, 1.0)


def image_input(info: ModelInfo) -> ImageInput:
    """The model's picture input, from its tensor spec and `netc.preprocessing`.

    Unsupported when the model does not take one image as NCHW floats.
    """
    what = f"model '{info.name}'"
    if len(info.inputs) != 1:
        raise Unsupported(
            f"{what} has {len(info.inputs)} inputs; the vision service needs "
            "a model with one image input"
        )
    spec = info.inputs[0]
    dims = spec.dims if info.max_batch_size else spec.dims[1:]
    if len(dims) != 3 or (not info.max_batch_size and spec.dims[0] not in (1, -1)):
        raise Unsupported(
            f"{what}: input '{spec.name}' has dims {list(spec.dims)}; the "
            "vision service needs an image input [batch, C, H, W]"
        )
    if spec.datatype not in ("FP32", "FP16"):
        raise Unsupported(
            f"{what}: input '{spec.name}' is {spec.datatype}; the vision "
            "service needs FP32 or FP16 images"
        )
    pre = info.preprocessing or {}
    if pre.get("layout", "NCHW") != "NCHW":
        raise Unsupported(f"{what}: preprocessing layout {pre['layout']}; expected NCHW")
    channels = dims[0] if dims[0] > 0 else int(pre.get("channels") or 3)
    size = tuple(d if d > 0 else None for d in dims[1:])
    resize_to = pre.get("resize_to")  # an open-size network trained at one size
    if (
        isinstance(resize_to, list)
        and len(resize_to) == 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in resize_to)
    ):
        size = tuple(fixed or wanted for fixed, wanted in zip(size, resize_to))
    mean, std = (_per_channel(pre.get(key), channels, key, what) for key in ("mean", "std"))
    low, high = pre.get("value_range") or (0.0, 1.0)
    return ImageInput(
        spec.name,
        np.dtype(np.float16 if spec.datatype == "FP16" else np.float32),
        channels,
        size,
        mean,
        std,
        (float(low), float(high)),
    )


def _per_channel(values, channels: int, key: str, what: str) -> np.ndarray | None:
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if array.size not in (1, channels) or (key == "std" and np.any(array == 0)):
        raise Unsupported(
            f"{what}: netc.preprocessing {key} {list(array)} does not fit {channels} channels"
        )
    return np.broadcast_to(array, (channels,)).reshape(channels, 1, 1)


class Prepared(NamedTuple):
    tensor: np.ndarray  # (1, C, H', W'): what the model runs on
    original: tuple[int, int]  # the picture's (H, W)
    content: tuple[int, int]  # the part of tensor holding the picture, from the top left


def prepare(
    image: np.ndarray,
    info: ModelInfo | ImageInput,
    *,
    rules: tuple[Callable | None, Callable | None] = (None, None),
    max_pixels: int | None = None,
) -> Prepared:
    """A decoded picture (C, H, W) in [0, 1] → the model's input (1, C, H', W').

    `rules` give the output size per axis as a function of the input size
    (`size_rule`); an open-size model runs at the smallest padded size whose
    output is as large as its input, which must stay within the pixel limit
    (a 1-pixel-tall picture may run 4 rows tall).
    """
    spec = info if isinstance(info, ImageInput) else image_input(info)
    x = to_channels(image, spec.channels)
    original = (x.shape[1], x.shape[2])
    # fixed axes: resized to the model's size; open axes: the picture's size, padded
    content = tuple(fixed or n for fixed, n in zip(spec.size, original))
    if content != original:
        x = resize(x, content)
    target = tuple(
        n if fixed else fitted_size(n, rule) for fixed, n, rule in zip(spec.size, content, rules)
    )
    limit = pixel_limit(max_pixels)
    if target != content and target[0] * target[1] > limit and None in spec.size:
        raise InvalidRequest(
            f"image is {original[1]}x{original[0]}; the model runs it padded to "
            f"{target[1]}x{target[0]} = {target[0] * target[1] / 1e6:.1f} megapixels, and "
            f"this server accepts at most {limit / 1e6:g} megapixels (send a smaller image)"
        )
    if target != content:
        x = np.pad(
            x, ((0, 0), (0, target[0] - content[0]), (0, target[1] - content[1])), mode="edge"
        )
    low, high = spec.value_range
    if (low, high) != (0.0, 1.0):
        x = x * (high - low) + low
    if spec.mean is not None:
        x = x - spec.mean
    if spec.std is not None:
        x = x / spec.std
    return Prepared(np.ascontiguousarray(x[None], dtype=spec.dtype), original, content)


# ---------------------------------------------------------------------------- outputs


def probabilities(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax along axis, unless x already holds probabilities there (the model ends
    in a softmax): non-negative and summing to 1."""
    x = x.astype(np.float32, copy=False)
    if x.min() >= 0 and np.allclose(x.sum(axis=axis), 1.0, atol=1e-3):
        return x
    # An infinite score gives NaN (inf - inf), as a NaN score does, without numpy's
    # RuntimeWarning line on the server's stderr for the first such request.
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


def output_mapping(
    prepared: Prepared,
    output_size: tuple[int, int],
    stride: tuple[float, float] | None,
    offset: tuple[float, float] | None,
) -> tuple[list[float], list[float]]:
    """(scale, shift) per axis taking a picture pixel to the output's coordinates.

    picture → model input: u = (y + 1/2)·c/H - 1/2 (c: the size the picture
    occupies there, c = H when only padded); model input → output: v = u
    when the output has the input's size, else v = (u - offset)/stride from
    the model's receptive-field metadata, else the output spans the input.
    """
    model_size = prepared.tensor.shape[-2:]
    scale, shift = [], []
    for axis in range(2):
        a = prepared.content[axis] / prepared.original[axis]
        b = a / 2 - 0.5
        n_in, n_out = model_size[axis], output_size[axis]
        if n_out != n_in:
            if stride is not None and offset is not None:
                s, o = stride[axis], offset[axis]
            else:
                s = n_in / n_out
                o = s / 2 - 0.5
            a, b = a / s, (b - o) / s
        scale.append(a)
        shift.append(b)
    return scale, shift


def dense_scores(
    output: np.ndarray,
    prepared: Prepared,
    *,
    stride: tuple[float, float] | None = None,
    offset: tuple[float, float] | None = None,
    want_scores: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A score map (K, h, w) → (mask uint8 (H, W), probabilities (K, H, W) or None)
    at the picture's own size; scores are interpolated before the softmax."""
    classes = output.shape[0]
    height, width = prepared.original
    scale, shift = output_mapping(prepared, output.shape[-2:], stride, offset)
    mask = np.empty((height, width), dtype=np.uint8)
    scores = np.empty((classes, height, width), dtype=np.float32) if want_scores else None
    rows = max(1, CHUNK_VALUES // max(1, classes * width))
    for top in range(0, height, rows):
        n = min(rows, height - top)
        chunk = resample(output, (n, width), scale, (shift[0] + top * scale[0], shift[1]))
        mask[top : top + n] = chunk.argmax(axis=0)
        if scores is not None:
            scores[:, top : top + n] = probabilities(chunk, axis=0)
    return mask, scores


def encode_png(mask: np.ndarray) -> bytes:
    """An 8-bit single-channel PNG of a uint8 (H, W) array."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- mask files

MASK_LABELS_KEY = "netc.labels"
"""The PNG text chunk holding a mask file's class names (JSON list, index = pixel value)."""
IGNORE_COLOUR = (224, 224, 192)  # PASCAL VOC's colour for 255, the ignore label


def palette(classes: int = 256) -> np.ndarray:
    """(classes, 3) uint8 colours: PASCAL VOC's colour map (0 black, 1 dark red, 2 green,
    3 olive, ...: the bits of the index spread over R, G and B), 255 VOC's ignore colour.
    VOC's own masks use it, so mask viewers and tools already read it."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        c, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours[index] = (r, g, b)
    colours[255] = IGNORE_COLOUR
    return colours[:classes]


def mask_png(mask: np.ndarray, labels: list[str] | None = None) -> bytes:
    """A uint8 (H, W) mask of class indices as a palette PNG: each pixel's value is its class
    (what `np.asarray(Image.open(f))` and training read), shown in `palette()` colours;
    `labels` go in the `netc.labels` text chunk."""
    from PIL.PngImagePlugin import PngInfo

    picture = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode "L"
    picture = picture.convert("P")  # "L" → "P" keeps the values as palette indices
    picture.putpalette(palette().tobytes())
    info = PngInfo()
    if labels is not None:
        info.add_text(MASK_LABELS_KEY, json.dumps(list(labels)))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def overlay_png(picture: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> bytes:
    """The picture (float (C, H, W) in [0, 1], as `decode_encoded` gives) with every pixel
    of class 1 and above tinted its palette colour; class 0 (background) is left as it is."""
    rgb = to_channels(picture, 3).transpose(1, 2, 0) * 255.0
    colours = palette()[mask].astype(np.float32)
    tinted = np.where((mask > 0)[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(tinted), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

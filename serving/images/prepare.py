"""A decoded picture → the model's input, by the model's own preprocessing.

The preprocessing is the model card's (`netc.preprocessing`, read and checked by
`netc.model_card`), applied exactly as training did:

1. resize (bilinear, no antialiasing, like `torch.nn.functional.interpolate`
   with `align_corners=False`) to the model's input size when it is fixed;
   models with open H and W keep the picture's size, padded at the bottom
   and right (edge pixels repeated) when the model needs a size multiple;
2. `x = (x - mean) / std` per channel, when the metadata has them.

`Prepared` keeps where the picture lies in the input, so that `scores.dense_scores`
can map the model's output back onto the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from netc.model_card import LAYOUT, Preprocessing
from netc.serving.errors import InvalidRequest, Unsupported
from netc.serving.images.decode import pixel_limit, to_channels
from netc.serving.images.geometry import fitted_size, resize
from netc.serving.model_info import ModelInfo


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
    pre = info.preprocessing or Preprocessing()
    if pre.layout != LAYOUT:
        raise Unsupported(f"{what}: preprocessing layout {pre.layout}; expected {LAYOUT}")
    channels = dims[0] if dims[0] > 0 else pre.channels or 3
    height, width = (d if d > 0 else None for d in dims[1:])
    if pre.resize_to is not None:  # an open-size network trained at one size
        height, width = height or pre.resize_to[0], width or pre.resize_to[1]
    try:
        mean, std = (_per_channel(v, channels) for v in pre.normalisation(channels))
    except ValueError as exc:
        raise Unsupported(f"{what}: {exc}") from None
    return ImageInput(
        spec.name,
        np.dtype(np.float16 if spec.datatype == "FP16" else np.float32),
        channels,
        (height, width),
        mean,
        std,
        pre.value_range,
    )


def _per_channel(values: tuple[float, ...] | None, channels: int) -> np.ndarray | None:
    return None if values is None else np.asarray(values, np.float32).reshape(channels, 1, 1)


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
    (`netc.model_card.size_rule`); an open-size model runs at the smallest padded size whose
    output is as large as its input, which must stay within the pixel limit
    (a 1-pixel-tall picture may run 4 rows tall).
    """
    spec = info if isinstance(info, ImageInput) else image_input(info)
    x = to_channels(image, spec.channels)
    original = (x.shape[1], x.shape[2])
    # fixed axes: resized to the model's size; open axes: the picture's size, padded
    (fixed_h, fixed_w), (rule_h, rule_w) = spec.size, rules
    content = (fixed_h or original[0], fixed_w or original[1])
    if content != original:
        x = resize(x, content)
    target = (
        content[0] if fixed_h else fitted_size(content[0], rule_h),
        content[1] if fixed_w else fitted_size(content[1], rule_w),
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

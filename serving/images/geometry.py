"""Sizes and bilinear sampling between a picture, a model's input and its output.

Every geometric step is an affine map between pixel centres, `src = a·dst + b`
(`resample`); `resize` is torch's bilinear `align_corners=False` case. Open-size
models give their output size as an expression of the input's (the model card's
`size_rule`), and `fitted_size` pads an input to the size whose output covers
every pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from netc.serving.errors import InvalidRequest

MAX_PAD = 64  # the most rows/columns added to reach a size the model accepts


def _axis(n_in: int, n_out: int, a: float, b: float):
    """Source indices and weights of bilinear sampling at src = a·dst + b (clamped)."""
    src = np.clip(np.arange(n_out, dtype=np.float64) * a + b, 0.0, n_in - 1)
    low = np.floor(src).astype(np.intp)
    high = np.minimum(low + 1, n_in - 1)
    return low, high, (src - low).astype(np.float32)


def resample(
    x: np.ndarray, size: tuple[int, int], scale: Sequence[float], shift: Sequence[float]
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

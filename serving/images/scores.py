"""Model outputs → probabilities, and dense score maps → the picture's own size.

A score map is mapped back onto the picture by composing the affine maps between
pixel centres: picture → model input (`prepare.Prepared`) → model output (its
`netc.output_stride`/`offset`); scores are interpolated before the softmax.

A single score (one logit, or a one-channel score map: a binary classifier or an
edge map trained with binary cross-entropy) is the logit of class 1: it becomes two
classes, 0 and 1, through the sigmoid, where a softmax over one value would say 1.0
everywhere.
"""

from __future__ import annotations

import numpy as np

from netc.serving.images.geometry import resample
from netc.serving.images.prepare import Prepared

CHUNK_VALUES = 1 << 24  # score values resampled at a time (bounds memory for big pictures)


def score_classes(scores: int) -> int:
    """The classes `scores` values along the class axis stand for (one logit: two)."""
    return 2 if scores == 1 else scores


def probabilities(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Softmax along axis, unless x already holds probabilities there (the model ends
    in a softmax): non-negative and summing to 1. One value along axis is a logit:
    [1 - sigmoid, sigmoid], two classes."""
    x = x.astype(np.float32, copy=False)
    if x.shape[axis] == 1:
        with np.errstate(over="ignore"):
            p = 1 / (1 + np.exp(-x))
        return np.concatenate([1 - p, p], axis=axis)
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
    classes = score_classes(output.shape[0])
    height, width = prepared.original
    scale, shift = output_mapping(prepared, output.shape[-2:], stride, offset)
    mask = np.empty((height, width), dtype=np.uint8)
    scores = np.empty((classes, height, width), dtype=np.float32) if want_scores else None
    rows = max(1, CHUNK_VALUES // max(1, classes * width))
    for top in range(0, height, rows):
        n = min(rows, height - top)
        chunk = resample(output, (n, width), scale, (shift[0] + top * scale[0], shift[1]))
        # one logit: class 1 where it is positive (sigmoid > 0.5)
        mask[top : top + n] = chunk[0] > 0 if len(chunk) == 1 else chunk.argmax(axis=0)
        if scores is not None:
            scores[:, top : top + n] = probabilities(chunk, axis=0)
    return mask, scores

"""Masks as PNG files: the service's 8-bit answer, palette mask files and overlays.

A mask file (what `netc infer` writes) is a palette PNG whose pixel values are class
indices, drawn in PASCAL VOC's colours, with the class names in a `netc.labels` text
chunk; training reads it back as a segmentation mask, `read_mask` with its names.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from netc.serving.images.decode import to_channels


def encode_png(mask: np.ndarray) -> bytes:
    """An 8-bit single-channel PNG of a uint8 (H, W) array."""
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


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


def read_mask(path: str | Path) -> tuple[np.ndarray, list[str] | None]:
    """A mask file `netc infer` wrote: (class indices uint8 (H, W), its class names or None).

    Works on any single-channel mask PNG (palette or grey); the names come from the
    `netc.labels` text chunk when the file has one."""
    with Image.open(path) as picture:
        picture.load()
        text = picture.info.get(MASK_LABELS_KEY)
        mask = np.asarray(picture)
    labels = json.loads(text) if isinstance(text, str) else None
    return mask, labels

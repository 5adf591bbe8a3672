"""The pictures that excite a channel most, cropped to what the unit sees.

For each channel of a layer, every picture's strongest unit (value and
position (i, j)) is found; the top k pictures are cropped at that unit's
receptive-field box from the analysis (centre start + i·jump, `size` pixels
across), padded with white where the box runs past the picture's edge. A
layer without a map (after flatten or fc) shows the whole picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from netc.compiler import symbolic as sym
from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, record
from netc.runtime.inspect.feature_maps import file_name
from netc.runtime.inspect.fields import Box, field_of, unit_box
from netc.runtime.inspect.source import Batch, Model

CHUNK = 256  # pictures run at a time
TOP_K = 8
CHANNELS = 8


@dataclass(frozen=True)
class Hit:
    channel: int
    picture: int  # index into the batch
    position: tuple[int, int] | None  # the unit (i, j); None for a layer without a map
    value: float
    box: Box


def _strongest(model: Model, inputs: torch.Tensor, layer: str):
    """Per picture and channel: the largest value and its flat position, (N, C) each."""
    values, places, shape = [], [], None
    with torch.no_grad():
        for start in range(0, len(inputs), CHUNK):
            out = record(model, inputs[start : start + CHUNK], [layer])[layer].float()
            shape = tuple(out.shape[1:])
            flat = out.reshape(out.shape[0], out.shape[1], -1)
            best, where = flat.max(dim=2)
            values.append(best)
            places.append(where)
    return torch.cat(values).numpy(), torch.cat(places).numpy(), shape


def top_hits(
    model: Model, pictures: Batch, layer: str, channels: list[int], k: int = TOP_K
) -> dict[int, list[Hit]]:
    """For each channel, its k strongest pictures (one unit each), strongest first."""
    values, places, shape = _strongest(model, pictures.inputs, layer)
    if any(c >= shape[0] for c in channels):
        raise UserError(
            f"--top-activations {layer}: it has {shape[0]} channels "
            f"(0-{shape[0] - 1}); asked for channel {max(channels)}"
        )
    height, width = pictures.shown.shape[-2:]
    field = field_of(model, layer)
    spatial = len(shape) == 3
    result = {}
    for channel in channels:
        order = np.argsort(-values[:, channel], kind="stable")[:k]
        hits = []
        for n in order:
            position = divmod(int(places[n, channel]), shape[2]) if spatial else None
            i, j = position or (0, 0)
            box = unit_box(field if spatial else _whole(field), i, j, height, width)
            hits.append(Hit(channel, int(n), position, float(values[n, channel]), box))
        result[channel] = hits
    return result


def _whole(field):
    from dataclasses import replace

    return replace(field, whole=True)


def crop(picture: torch.Tensor, box: Box) -> np.ndarray:
    """The box's pixels of a (C, H, W) picture as (h, w) or (h, w, 3), white outside it."""
    array = picture.detach().cpu().numpy()
    channels, height, width = array.shape
    top, left = math.ceil(box.top), math.ceil(box.left)
    bottom, right = math.floor(box.bottom), math.floor(box.right)
    out = np.ones((channels, bottom - top + 1, right - left + 1), dtype=np.float32)
    rows = slice(max(top, 0), min(bottom, height - 1) + 1)
    columns = slice(max(left, 0), min(right, width - 1) + 1)
    out[:, rows.start - top : rows.stop - top, columns.start - left : columns.stop - left] = array[
        :, rows, columns
    ]
    return out[0] if channels == 1 else out.transpose(1, 2, 0)


def save(
    model: Model,
    pictures: Batch,
    layer: str,
    folder: Path,
    *,
    channels: int = CHANNELS,
    k: int = TOP_K,
) -> tiles.Grid:
    """top_<layer>.png: one row per channel (the first `channels`), its k best crops."""
    check_layer(model, layer, "--top-activations")
    shape = next(s.shape for s in model.analysis.layers if s.name == layer)
    count = min(channels, sym.static(shape[1]))
    hits = top_hits(model, pictures, layer, list(range(count)), k)
    grid = []
    for channel in range(count):
        for hit in hits[channel]:
            image = crop(pictures.shown[hit.picture], hit.box)
            tile = tiles.Tile(image, f"#{channel}: {hit.value:.2g}", cmap="gray", limits=(0, 1))
            grid.append(tile)
    columns = len(hits[0]) if count else 1
    size_h, size_w = hits[0][0].box.size if count else (0, 0)
    title = (
        f"{model.graph.name} · {layer}: the {columns} strongest of {len(pictures.inputs)} "
        f"pictures for channels 0-{count - 1} (one row each), cropped to the "
        f"{float(size_h):g}x{float(size_w):g} px receptive field"
    )
    return tiles.save_grid(folder / file_name("top", layer), grid, title, columns=columns)

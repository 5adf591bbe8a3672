"""A layer's output for one picture: one tile per channel, the picture first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from netc.compiler.analysis import field_json
from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, record, spatial_layers
from netc.runtime.inspect.source import Batch, Model

MAX_CHANNELS = 64  # past this a grid's tiles get too small to read


def file_name(kind: str, layer: str) -> str:
    return f"{kind}_{''.join(c if c.isalnum() or c in '-_' else '_' for c in layer)}.png"


def picture_tile(shown: torch.Tensor, label: str) -> tiles.Tile:
    """A (C, H, W) picture in [0, 1] as a tile (grey or RGB)."""
    array = shown.detach().cpu().numpy()
    if array.shape[0] == 3:
        return tiles.Tile(array.transpose(1, 2, 0), label)
    return tiles.Tile(array[0], label, cmap="gray", limits=(0.0, 1.0))


def save(
    model: Model,
    pictures: Batch,
    layer: str,
    folder: Path,
    *,
    max_channels: int = MAX_CHANNELS,
    flag: str = "--layer",
) -> tiles.Grid:
    """features_<layer>.png: the layer's channels (up to max_channels) for the first picture.

    Each channel has its own colour scale (its min and max under the tile),
    so a weak channel's pattern is still visible.
    """
    check_layer(model, layer, flag)
    if layer not in spatial_layers(model):
        shape = next(s.shape for s in model.analysis.layers if s.name == layer)
        raise UserError(
            f"{flag} {layer}: its output {list(shape[1:])} is not a feature map "
            f"(C, H, W)\n  hint: layers with maps: {', '.join(spatial_layers(model))}"
        )
    with torch.no_grad():
        output = record(model, pictures.inputs[:1], [layer])[layer][0].float().numpy()
    analysed = next(item for item in model.analysis.layers if item.name == layer)
    return draw(
        model.graph.name,
        layer,
        output,
        pictures.shown[0],
        pictures.names[0],
        folder,
        max_channels,
        field=field_text(field_json(analysed.field)),
    )


def field_text(field: dict) -> str:
    """A layer's receptive field as its title says it: "field 14x14, stride 4"."""
    if field["whole_input"]:
        return "field: the whole input"
    size = "x".join("?" if v is None else f"{v:g}" for v in field["size"])
    stride = "x".join("?" if v is None else f"{v:g}" for v in field["stride"])
    return f"field {size}, stride {stride}"


def most_active(output: np.ndarray, count: int) -> list[int]:
    """The `count` channels of a (C, h, w) map with the largest mean response, in
    channel order (all of them when there are no more than `count`)."""
    if output.shape[0] <= count:
        return list(range(output.shape[0]))
    means = output.reshape(output.shape[0], -1).mean(axis=1)
    return sorted(np.argsort(-means, kind="stable")[:count].tolist())


def draw(
    network: str,
    layer: str,
    output: np.ndarray,
    shown: torch.Tensor,
    name: str,
    folder: Path,
    max_channels: int = MAX_CHANNELS,
    field: str = "",
) -> tiles.Grid:
    """features_<layer>.png from a layer's (C, h, w) output and the picture it came from:
    every channel, or the `max_channels` most active ones (largest mean), saying so."""
    channels = most_active(output, max_channels)
    grid = [picture_tile(shown, name)]
    for channel in channels:
        values = output[channel]
        grid.append(tiles.Tile(values, f"#{channel}  {values.min():.2g}..{values.max():.2g}"))
    more = "" if len(channels) == output.shape[0] else f", the {len(channels)} most active shown"
    title = (
        f"{network} · {layer}: {output.shape[0]} channels of "
        f"{output.shape[1]}x{output.shape[2]}{more}{' · ' + field if field else ''} · {name}"
    )
    columns = tiles.balanced_columns(len(grid))
    return tiles.save_grid(folder / file_name("features", layer), grid, title, columns)

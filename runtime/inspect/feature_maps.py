"""A layer's output for one picture: one tile per channel, the picture first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, record, spatial_layers
from netc.runtime.inspect.source import Batch, Model

MAX_CHANNELS = 32


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
            f"error: {flag} {layer}: its output {list(shape[1:])} is not a feature map "
            f"(C, H, W)\n  hint: layers with maps: {', '.join(spatial_layers(model))}"
        )
    with torch.no_grad():
        output = record(model, pictures.inputs[:1], [layer])[layer][0].float().numpy()
    return draw(
        model.graph.name, layer, output, pictures.shown[0], pictures.names[0], folder, max_channels
    )


def draw(
    network: str,
    layer: str,
    output: np.ndarray,
    shown: torch.Tensor,
    name: str,
    folder: Path,
    max_channels: int = MAX_CHANNELS,
) -> tiles.Grid:
    """features_<layer>.png from a layer's (C, h, w) output and the picture it came from."""
    count = min(output.shape[0], max_channels)
    grid = [picture_tile(shown, name)]
    for channel in range(count):
        values = output[channel]
        grid.append(tiles.Tile(values, f"#{channel}  {values.min():.2g}..{values.max():.2g}"))
    more = "" if count == output.shape[0] else f", first {count} shown"
    title = (
        f"{network} · {layer}: {output.shape[0]} channels of "
        f"{output.shape[1]}x{output.shape[2]}{more} · {name}"
    )
    columns = tiles.balanced_columns(len(grid))
    return tiles.save_grid(folder / file_name("features", layer), grid, title, columns)

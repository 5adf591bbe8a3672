"""A conv layer's weights as pictures.

Filters over 3 input channels are drawn in colour (each rescaled to [0, 1]
on its own, as the AlexNet paper shows its first layer); over 1 channel in
grey; deeper filters one tile per (output, input) channel pair, all on one
symmetric colour scale (blue negative, red positive).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, conv_layers
from netc.runtime.inspect.feature_maps import file_name
from netc.runtime.inspect.source import Model

MAX_FILTERS = 64
MAX_PAIRS_OUT, MAX_PAIRS_IN = 8, 8


def default_layer(model: Model) -> str:
    convs = conv_layers(model)
    if not convs:
        raise UserError(f"--filters: {model.graph.name} has no conv layer")
    return convs[0]


def weight_of(model: Model, layer: str) -> np.ndarray:
    node = next(n for n in model.graph.nodes if n.name == layer)
    if node.op not in ("conv", "conv_transpose"):
        raise UserError(
            f"--filters {layer}: it is a {node.op} layer, not a conv\n"
            f"  hint: conv layers: {', '.join(conv_layers(model))}"
        )
    weight = model.module.get_parameter(f"{layer}.weight").detach().float().numpy()
    if node.op == "conv_transpose":  # (in, out/g, kh, kw): show per output channel
        weight = weight.transpose(1, 0, 2, 3)
    return weight


def tiles_for(weight: np.ndarray) -> tuple[list[tiles.Tile], str, int]:
    """(tiles, what they show, columns) for a weight (out, in, kh, kw)."""
    out, inputs = weight.shape[:2]
    if inputs in (1, 3):
        count = min(out, MAX_FILTERS)
        grid = []
        bound = float(np.abs(weight).max()) or 1.0
        for o in range(count):
            w = weight[o]
            if inputs == 3:
                low, high = float(w.min()), float(w.max())
                rgb = (w - low) / (high - low) if high > low else np.full_like(w, 0.5)
                grid.append(tiles.Tile(rgb.transpose(1, 2, 0), f"#{o}"))
            else:
                grid.append(tiles.Tile(w[0], f"#{o}", cmap="RdBu_r", limits=(-bound, bound)))
        return grid, f"{count} of {out} filters", tiles.MAX_COLUMNS
    rows, columns = min(out, MAX_PAIRS_OUT), min(inputs, MAX_PAIRS_IN)
    bound = float(np.abs(weight[:rows, :columns]).max()) or 1.0
    grid = [
        tiles.Tile(weight[o, i], f"{o}←{i}", cmap="RdBu_r", limits=(-bound, bound))
        for o in range(rows)
        for i in range(columns)
    ]
    return grid, f"output channels 0-{rows - 1} (rows) x input channels 0-{columns - 1}", columns


def save(model: Model, layer: str | None, folder: Path) -> tiles.Grid:
    """filters_<layer>.png for `layer` (default: the first conv)."""
    layer = check_layer(model, layer, "--filters") if layer else default_layer(model)
    weight = weight_of(model, layer)
    grid, what, columns = tiles_for(weight)
    title = f"{model.graph.name} · {layer} weights {list(weight.shape)} (out, in, kH, kW): {what}"
    return tiles.save_grid(folder / file_name("filters", layer), grid, title, columns)

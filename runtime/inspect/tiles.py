"""The grid of small pictures every inspection draws, with matplotlib.

A grid's size in pixels follows from its rows and columns alone
(`grid_pixels`), so a reader (and a test) knows what a PNG holds: one tile
per channel, filter or crop, each with its label under it, the title on top.
Figures are drawn on matplotlib's Agg canvas without pyplot (no global
state, no display needed) and written atomically.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from netc.errors import UserError
from netc.fileio import write_atomic

DPI = 100
TILE = 96  # pixels of one tile's picture
LABEL = 16  # pixels of the label line under it
GAP = 6
MARGIN = 8
TITLE_LINE = 15  # pixels per line of the title
CHAR = 7.2  # pixels a title character may take (DejaVu Sans at 10 pt, 100 dpi)
MAX_COLUMNS = 8


@dataclass
class Tile:
    """One small picture: (H, W) values drawn with `cmap`, or (H, W, 3) RGB in [0, 1].

    `box` (top, left, bottom, right) in pixel-centre coordinates draws a
    rectangle around those pixels; `overlay` (H, W) in [0, 1] is drawn over
    the picture, semi-transparent.
    """

    image: np.ndarray
    label: str = ""
    cmap: str = "viridis"
    limits: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None
    overlay: np.ndarray | None = None


@dataclass(frozen=True)
class Grid:
    """What a written grid holds: rows x columns cells, `tiles` of them drawn."""

    path: Path
    rows: int
    columns: int
    tiles: int
    pixels: tuple[int, int] = field(default=(0, 0))  # (width, height)


def grid_shape(count: int, columns: int = MAX_COLUMNS) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def balanced_columns(count: int, most: int = 9) -> int:
    """Columns for `count` tiles in as few rows as `most` columns allow, the rows as even
    as can be (17 tiles: 9 + 8, not 8 + 8 + 1)."""
    rows = math.ceil(count / most)
    return math.ceil(count / rows)


def grid_pixels(rows: int, columns: int, tile: int = TILE, title_lines: int = 1) -> tuple[int, int]:
    """(width, height) in pixels of a grid of rows x columns tiles of `tile` pixels."""
    width = 2 * MARGIN + columns * tile + (columns - 1) * GAP
    height = _title_height(title_lines) + rows * (tile + LABEL) + (rows - 1) * GAP + MARGIN
    return width, height


def _title_height(lines: int) -> int:
    return 2 * MARGIN + lines * TITLE_LINE


def title_lines(title: str, width: int) -> list[str]:
    """The title broken to fit `width` pixels (its own line breaks kept)."""
    per_line = max(20, int((width - 2 * MARGIN) / CHAR))
    return [
        line for paragraph in title.split("\n") for line in textwrap.wrap(paragraph, per_line)
    ] or [""]


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UserError(
            "netc inspect draws with matplotlib, which is not installed\n"
            "  hint: pip install 'netc[inspect]' (or pip install matplotlib)"
        ) from None
    return matplotlib


def new_figure(width: int, height: int):
    """A matplotlib Figure of exactly width x height pixels on the Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    write_atomic(path, buffer.getvalue())


def draw_tile(axes, tile: Tile) -> None:
    image = np.asarray(tile.image, dtype=np.float32)
    if image.ndim == 3:
        axes.imshow(np.clip(image, 0, 1), interpolation="nearest")
    else:
        low, high = tile.limits if tile.limits is not None else _limits(image)
        axes.imshow(image, cmap=tile.cmap, vmin=low, vmax=high, interpolation="nearest")
    if tile.overlay is not None:  # opaque where strong, clear where 0: the picture shows
        from matplotlib import colormaps

        strength = np.clip(np.asarray(tile.overlay, dtype=np.float32), 0, 1)
        rgba = colormaps["jet"](strength)
        rgba[..., 3] = 0.7 * strength
        axes.imshow(rgba, interpolation="bilinear")
    if tile.box is not None:
        from matplotlib.patches import Rectangle

        top, left, bottom, right = tile.box
        axes.add_patch(
            Rectangle(
                (left - 0.5, top - 0.5),
                right - left + 1,
                bottom - top + 1,
                fill=False,
                edgecolor="#ff2d2d",
                linewidth=1.5,
            )
        )
        axes.set_xlim(-0.5, image.shape[1] - 0.5)
        axes.set_ylim(image.shape[0] - 0.5, -0.5)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_linewidth(0.5)
        spine.set_color("#999999")


def _limits(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def save_grid(
    path: Path, tiles: Sequence[Tile], title: str, columns: int = MAX_COLUMNS, tile: int = TILE
) -> Grid:
    """Draw `tiles` in a grid under `title` and write the PNG; returns what it holds."""
    rows, columns = grid_shape(len(tiles), columns)
    width, _ = grid_pixels(rows, columns, tile)
    lines = title_lines(title, width)
    width, height = grid_pixels(rows, columns, tile, len(lines))
    figure = new_figure(width, height)
    figure.text(
        MARGIN / width, 1 - MARGIN / height, "\n".join(lines), ha="left", va="top", fontsize=10
    )
    for index, item in enumerate(tiles):
        row, column = divmod(index, columns)
        left = MARGIN + column * (tile + GAP)
        top = _title_height(len(lines)) + row * (tile + LABEL + GAP)
        axes = figure.add_axes(
            (left / width, 1 - (top + tile) / height, tile / width, tile / height)
        )
        draw_tile(axes, item)
        if item.label:
            figure.text(
                (left + tile / 2) / width,
                1 - (top + tile + 2) / height,
                item.label,
                ha="center",
                va="top",
                fontsize=7,
            )
    save_figure(figure, path)
    return Grid(path, rows, columns, len(tiles), (width, height))

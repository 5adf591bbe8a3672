"""Receptive fields on the picture: the analysis's box and a gradient probe of it.

The analysis (compiler/receptive_field.py) says that unit (i, j) of a layer
sees the input pixels centred at (start_h + i·jump_h, start_w + j·jump_w),
`size` pixels across. The probe measures it instead: the gradient of that
unit with respect to the input is non-zero only on pixels the unit depends
on. The probe's box lies inside the analysis box, and equals it when no unit
on the way is cut off (a ReLU at 0, a max pool picking one input, a zero
weight); the overlay draws both, and the gradient's magnitude (the
"effective" receptive field, which concentrates at the centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from netc.compiler.receptive_field import Field
from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.inspect.activations import check_layer, record, spatial_layers
from netc.runtime.inspect.feature_maps import file_name, picture_tile
from netc.runtime.inspect.source import Batch, Model

PANEL = 256  # pixels of each of the overlay's two panels


@dataclass(frozen=True)
class Box:
    """Input pixels top..bottom, left..right (inclusive, pixel-centre coordinates)."""

    top: Fraction
    left: Fraction
    bottom: Fraction
    right: Fraction

    @property
    def centre(self) -> tuple[Fraction, Fraction]:
        return (self.top + self.bottom) / 2, (self.left + self.right) / 2

    @property
    def size(self) -> tuple[Fraction, Fraction]:
        return self.bottom - self.top + 1, self.right - self.left + 1

    def as_floats(self) -> tuple[float, float, float, float]:
        return float(self.top), float(self.left), float(self.bottom), float(self.right)

    def clipped(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The whole pixels of the box inside a height x width picture."""
        return (
            max(0, math.ceil(self.top)),
            max(0, math.ceil(self.left)),
            min(height - 1, math.floor(self.bottom)),
            min(width - 1, math.floor(self.right)),
        )


def field_of(model: Model, layer: str) -> Field:
    return next(s.field for s in model.analysis.layers if s.name == layer)


def unit_box(field: Field, i: int, j: int, height: int, width: int) -> Box:
    """The input pixels unit (i, j) sees; a field over the whole input is the picture."""
    if field.whole:
        return Box(Fraction(0), Fraction(0), Fraction(height - 1), Fraction(width - 1))
    h, w = field.axes()
    top, left = h.start + i * h.jump - (h.size - 1) / 2, w.start + j * w.jump - (w.size - 1) / 2
    return Box(top, left, top + h.size - 1, left + w.size - 1)


def centre_unit(shape) -> tuple[int, int]:
    return (int(shape[-2]) - 1) // 2, (int(shape[-1]) - 1) // 2


def gradient(
    model: Model, inputs: torch.Tensor, layer: str, i: int, j: int, channel: int | None = None
) -> np.ndarray:
    """|d unit(i, j) / d input| summed over input channels, (H, W), for the first picture;
    the unit is one channel, or the sum over channels when `channel` is None."""
    x = inputs[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        output = record(model, x, [layer])[layer]
        unit = output[0, :, i, j] if channel is None else output[0, channel, i, j]
        (grad,) = torch.autograd.grad(unit.sum(), x)
    return grad[0].abs().sum(dim=0).numpy()


def support_box(magnitude: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the non-zero pixels, or None when all are zero."""
    rows, columns = np.nonzero(magnitude.any(axis=1))[0], np.nonzero(magnitude.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(rows[0]), int(columns[0]), int(rows[-1]), int(columns[-1])


def parse_position(text: str | None, shape) -> tuple[int, int]:
    """'I,J' → a unit of the layer's map (default: its centre); a UserError when outside."""
    if text is None:
        return centre_unit(shape)
    parts = text.split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--position {text}: expected I,J (row, column), e.g. 3,4")
    i, j = (int(p) for p in parts)
    if not (i < shape[-2] and j < shape[-1]):
        raise UserError(
            f"--position {text}: outside the layer's {shape[-2]}x{shape[-1]} map "
            f"(rows 0-{shape[-2] - 1}, columns 0-{shape[-1] - 1})"
        )
    return i, j


def _number(value: Fraction) -> str:
    return str(int(value)) if value.denominator == 1 else f"{float(value):g}"


def save(
    model: Model, pictures: Batch, layer: str, folder: Path, position: str | None = None
) -> tiles.Grid:
    """receptive_field_<layer>.png: the picture with the unit's box, and the probe."""
    check_layer(model, layer, "--receptive-field")
    if layer not in spatial_layers(model):
        raise UserError(
            f"--receptive-field {layer}: its output is not a feature map, so its "
            f"units have no place on the picture\n  hint: layers with maps: "
            f"{', '.join(spatial_layers(model))}"
        )
    with torch.no_grad():
        shape = record(model, pictures.inputs[:1], [layer])[layer].shape
    i, j = parse_position(position, shape)
    height, width = pictures.shown.shape[-2:]
    box = unit_box(field_of(model, layer), i, j, height, width)
    magnitude = gradient(model, pictures.inputs, layer, i, j)
    probe = support_box(magnitude)
    size_h, size_w = box.size
    centre = box.centre
    field = field_of(model, layer)
    stride = "whole input" if field.whole else "x".join(_number(a.jump) for a in field.axes())
    probe_text = (
        "gradient is zero here"
        if probe is None
        else f"rows {probe[0]}-{probe[2]}, columns {probe[1]}-{probe[3]}"
    )
    title = (
        f"{model.graph.name} · {layer} unit ({i}, {j}): receptive field "
        f"{_number(size_h)}x{_number(size_w)} px, stride {stride}, centred at "
        f"({_number(centre[0])}, {_number(centre[1])})\ngradient probe: {probe_text}"
    )
    shown = picture_tile(pictures.shown[0], f"{pictures.names[0]}: analysis box")
    shown.box = box.as_floats()
    peak = float(magnitude.max()) or 1.0
    heat = tiles.Tile(
        magnitude / peak, "|gradient| (effective field)", cmap="magma", limits=(0.0, 1.0)
    )
    heat.box = box.as_floats()
    grid = [shown, heat]
    return tiles.save_grid(
        folder / file_name("receptive_field", layer), grid, title, columns=2, tile=PANEL
    )

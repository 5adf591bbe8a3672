"""Receptive fields: size, effective stride (jump) and centre offset per axis.

For a feature map, output position x along an axis sees input pixels centred
at `start + x·jump`, spanning `size` pixels (Araujo et al., "Computing
Receptive Fields of Convolutional Neural Networks", Distill 2019). Input pixel
centres sit at integer coordinates 0, 1, 2, ...; values are exact fractions.

Window ops (conv, pools) with kernel k, dilation d, stride s, leading pad p:

    k' = d·(k-1) + 1
    size'  = size + (k'-1)·jump
    jump'  = jump·s
    start' = start + ((k'-1)/2 - p)·jump

Merges (add, concat) take the union of their inputs' fields; `flatten` is a
window over the whole map (kernel = its size, as the fc-to-conv rewrite makes
explicit); global and adaptive pools see the whole input (`whole`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from netc.compiler import symbolic as sym
from netc.compiler.ops.base import Shape, ShapeError


@dataclass(frozen=True)
class AxisField:
    size: Fraction
    jump: Fraction
    start: Fraction

    def window(self, kernel: int, stride: int, dilation: int, pad: int) -> AxisField:
        span = dilation * (kernel - 1)
        return AxisField(
            self.size + span * self.jump,
            self.jump * stride,
            self.start + (Fraction(span, 2) - pad) * self.jump,
        )


@dataclass(frozen=True)
class Field:
    """The receptive field of one tensor (None axes: the tensor has no spatial axes)."""

    height: AxisField
    width: AxisField
    whole: bool = False  # sees the whole input, whatever its size

    def axes(self) -> tuple[AxisField, AxisField]:
        return (self.height, self.width)


def for_input(shape: Shape) -> Field:
    unit = AxisField(Fraction(1), Fraction(1), Fraction(0))
    return Field(unit, unit)


def for_node(node, inputs: list[Field], in_shapes: list[Shape]) -> Field:
    from netc.compiler.ops import OPS

    kind = OPS[node.op].rf
    if kind in ("pointwise", "dense"):
        return inputs[0]
    if inputs[0].whole or kind == "global":
        return Field(inputs[0].height, inputs[0].width, whole=True)
    if kind == "window":
        a = node.attrs
        height, width = (
            inputs[0]
            .axes()[i]
            .window(a["kernel"][i], a["stride"][i], a["dilation"][i], a["padding"][i])
            for i in range(2)
        )
        return Field(height, width)
    if kind == "flatten":
        x = in_shapes[0]
        if len(x) != 4:
            return inputs[0]
        # flatten's shape rule has checked the size static
        height, width = (
            inputs[0].axes()[i].window(size, size, 1, 0)
            for i, size in enumerate(sym.static(d) for d in x[2:])
        )
        return Field(height, width)
    if kind == "merge":
        return _union(inputs)
    if kind == "crop":
        oh, ow = node.attrs["offset"]
        h, w = inputs[0].axes()
        return Field(
            AxisField(h.size, h.jump, h.start + oh * h.jump),
            AxisField(w.size, w.jump, w.start + ow * w.jump),
        )
    if kind == "upsample":
        return _upsample(node, inputs[0], in_shapes[0])
    if kind == "transpose":
        return _transpose(node, inputs[0])
    raise ValueError(f"no receptive-field rule for {node.op}")


def _union(inputs: list[Field]) -> Field:
    if any(f.whole for f in inputs):
        return Field(inputs[0].height, inputs[0].width, whole=True)
    axes = []
    for i in range(2):
        fields = [f.axes()[i] for f in inputs]
        low = min(f.start - (f.size - 1) / 2 for f in fields)
        high = max(f.start + (f.size - 1) / 2 for f in fields)
        axes.append(AxisField(high - low + 1, max(f.jump for f in fields), (low + high) / 2))
    height, width = axes
    return Field(height, width)


def _upsample(node, field: Field, shape: Shape) -> Field:
    """Half-pixel resize: output x samples input coordinate (x + 1/2)/f - 1/2."""
    a = node.attrs
    if a["scale"] is not None:
        scales = [Fraction(s) for s in a["scale"]]
    elif all(sym.is_static(d) for d in shape[2:]):
        scales = [Fraction(a["size"][i], sym.static(shape[2 + i])) for i in range(2)]
    else:
        return Field(field.height, field.width, whole=True)
    axes = []
    for f, scale in zip(field.axes(), scales):
        extra = f.jump if a["mode"] == "bilinear" else 0  # interpolates 2 neighbours
        axes.append(
            AxisField(
                f.size + extra,
                f.jump / scale,
                f.start + (Fraction(1, 2) / scale - Fraction(1, 2)) * f.jump,
            )
        )
    height, width = axes
    return Field(height, width)


def _transpose(node, field: Field) -> Field:
    """Output o gathers inputs i = (o + p - d·t)/s, t = 0..k-1; centre (o + p - d(k-1)/2)/s."""
    a = node.attrs
    axes = []
    for i, f in enumerate(field.axes()):
        k, s, d, p = a["kernel"][i], a["stride"][i], a["dilation"][i], a["padding"][i]
        span = Fraction(d * (k - 1), s)
        axes.append(
            AxisField(
                f.size + span * f.jump,
                f.jump / s,
                f.start + (Fraction(p) - Fraction(d * (k - 1), 2)) / s * f.jump,
            )
        )
    height, width = axes
    return Field(height, width)


def crop_offset(x: Field, reference: Field) -> tuple[int, int]:
    """The crop offset that puts x's pixel centres on the reference's (FCN's crop)."""
    if x.whole or reference.whole:
        raise ShapeError(
            "cannot compute an automatic crop offset after global pooling",
            hint="give the crop an explicit offset",
        )
    offsets = []
    for axis, fx, fr in zip(("height", "width"), x.axes(), reference.axes()):
        if fx.jump != fr.jump:
            raise ShapeError(
                f"crop inputs have different strides along the {axis}, so no offset aligns them",
                expected=f"the reference's stride {fr.jump}",
                found=f"stride {fx.jump}",
                hint="upsample the input to the reference's resolution first",
            )
        offset = (fr.start - fx.start) / fx.jump
        if offset.denominator != 1 or offset < 0:
            raise ShapeError(
                f"no whole-pixel crop offset aligns the inputs along the {axis}",
                expected="a non-negative integer offset",
                found=f"{offset}",
                hint="give the crop an explicit offset",
            )
        offsets.append(int(offset))
    return (offsets[0], offsets[1])

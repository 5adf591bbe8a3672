"""conv and conv_transpose."""

from __future__ import annotations

from netc.compiler import symbolic as sym
from netc.compiler.ops import attrs as a
from netc.compiler.ops.base import Attrs, OpDef, Shape, ShapeError, require_rank
from netc.compiler.ops.spatial import AXES, check_positive, resolve_padding, window_out


def _check_groups(attrs: Attrs, in_channels: int, what: str) -> None:
    groups = attrs["groups"]
    for side, channels in (("input", in_channels), ("output", attrs["channels"])):
        if channels % groups:
            raise ShapeError(
                f"{what} {side} channels must divide into groups",
                expected=f"a multiple of groups={groups}",
                found=f"{channels} {side} channels",
            )


def _normalize_conv(attrs: Attrs) -> Attrs:
    return {
        **attrs,
        "padding": resolve_padding(
            attrs["padding"], attrs["kernel"], attrs["dilation"], attrs["stride"]
        ),
    }


def _infer_conv(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "conv")
    _check_groups(attrs, sym.static(x[1]), "conv")
    top, left, bottom, right = attrs["padding"]
    pads = ((top, bottom), (left, right))
    spatial = tuple(
        window_out(
            x[2 + i],
            attrs["kernel"][i],
            attrs["stride"][i],
            attrs["dilation"][i],
            pads[i][0],
            pads[i][1],
            False,
            AXES[i],
        )
        for i in range(2)
    )
    return (x[0], attrs["channels"], *spatial)


def _conv_params(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    params = {"weight": (attrs["channels"], inputs[0][1] // attrs["groups"], *attrs["kernel"])}
    if attrs["bias"]:
        params["bias"] = (attrs["channels"],)
    return params


def _conv_macs(attrs: Attrs, inputs: list[Shape], out: Shape) -> int:
    kh, kw = attrs["kernel"]
    channels, height, width = (sym.static(d) for d in out[1:])
    in_channels = sym.static(inputs[0][1])
    return channels * height * width * (in_channels // attrs["groups"]) * kh * kw


CONV = OpDef(
    name="conv",
    doc="2-D cross-correlation: y = W ⋆ x + b, W of shape (Cout, Cin/groups, kh, kw).",
    attrs={
        "channels": a.Attr(a.positive_int),
        "kernel": a.Attr(a.positive_pair),
        "stride": a.Attr(a.positive_pair, 1),
        "padding": a.Attr(a.conv_padding, 0),
        "dilation": a.Attr(a.positive_pair, 1),
        "groups": a.Attr(a.positive_int, 1),
        "bias": a.Attr(a.boolean, True),
    },
    infer=_infer_conv,
    rf="window",
    params=_conv_params,
    macs=_conv_macs,
    normalize=_normalize_conv,
    tags=frozenset({"weighted"}),
)


def _normalize_transpose(attrs: Attrs) -> Attrs:
    ph, pw = attrs["padding"]
    return {**attrs, "padding": (ph, pw, ph, pw)}


def _infer_transpose(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "conv_transpose")
    _check_groups(attrs, sym.static(x[1]), "conv_transpose")
    spatial = []
    for i in range(2):
        k, s, d = attrs["kernel"][i], attrs["stride"][i], attrs["dilation"][i]
        out_pad = attrs["output_padding"][i]
        if out_pad >= max(s, d):
            raise ShapeError(
                f"output_padding along the {AXES[i]} must be smaller than stride or dilation",
                expected=f"output_padding < {max(s, d)}",
                found=str(out_pad),
                attr="output_padding",
            )
        # (x - 1)·s - 2p + d·(k - 1) + output_padding + 1
        size = sym.add(
            sym.mul(sym.add(x[2 + i], -1), s), -2 * attrs["padding"][i] + d * (k - 1) + out_pad + 1
        )
        spatial.append(check_positive(size, f"conv_transpose output {AXES[i]}"))
    return (x[0], attrs["channels"], *spatial)


def _transpose_params(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    params = {"weight": (inputs[0][1], attrs["channels"] // attrs["groups"], *attrs["kernel"])}
    if attrs["bias"]:
        params["bias"] = (attrs["channels"],)
    return params


def _transpose_macs(attrs: Attrs, inputs: list[Shape], out: Shape) -> int:
    in_channels, height, width = (sym.static(d) for d in inputs[0][1:])
    kh, kw = attrs["kernel"]
    return in_channels * height * width * (attrs["channels"] // attrs["groups"]) * kh * kw


CONV_TRANSPOSE = OpDef(
    name="conv_transpose",
    doc="Transposed 2-D convolution (learned upsampling); W of shape (Cin, Cout/groups, kh, kw).",
    attrs={
        "channels": a.Attr(a.positive_int),
        "kernel": a.Attr(a.positive_pair),
        "stride": a.Attr(a.positive_pair, 1),
        "padding": a.Attr(a.non_negative_pair, 0),
        "output_padding": a.Attr(a.non_negative_pair, 0),
        "dilation": a.Attr(a.positive_pair, 1),
        "groups": a.Attr(a.positive_int, 1),
        "bias": a.Attr(a.boolean, True),
    },
    infer=_infer_transpose,
    rf="transpose",
    params=_transpose_params,
    macs=_transpose_macs,
    normalize=_normalize_transpose,
    tags=frozenset({"weighted"}),
)

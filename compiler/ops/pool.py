"""Pooling ops: windowed, global, adaptive, and spatial pyramid pooling."""

from __future__ import annotations

from netc.compiler.ops import attrs as a
from netc.compiler.ops.base import Attrs, OpDef, Shape, ShapeError, require_rank
from netc.compiler.ops.spatial import AXES, window_out


def _normalize_pool(attrs: Attrs) -> Attrs:
    stride = attrs["stride"] if attrs["stride"] is not None else attrs["kernel"]
    ph, pw = attrs["padding"]
    return {**attrs, "stride": stride, "dilation": (1, 1), "padding": (ph, pw, ph, pw)}


def _infer_pool(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "pooling")
    for i in range(2):
        if attrs["padding"][i] * 2 > attrs["kernel"][i]:
            raise ShapeError(
                f"pool padding along the {AXES[i]} must be at most half the kernel",
                expected=f"padding <= {attrs['kernel'][i] // 2}",
                found=str(attrs["padding"][i]),
                attr="padding",
            )
    spatial = tuple(
        window_out(
            x[2 + i],
            attrs["kernel"][i],
            attrs["stride"][i],
            1,
            attrs["padding"][i],
            attrs["padding"][i + 2],
            attrs["ceil_mode"],
            AXES[i],
        )
        for i in range(2)
    )
    return (x[0], x[1], *spatial)


_WINDOW_ATTRS = {
    "kernel": a.Attr(a.positive_pair),
    "stride": a.Attr(a.optional(a.positive_pair), None, "default: the kernel"),
    "padding": a.Attr(a.non_negative_pair, 0),
    "ceil_mode": a.Attr(a.boolean, False),
}

MAX_POOL = OpDef(
    name="max_pool",
    doc="Maximum over each kernel window; padding counts as -inf.",
    attrs=dict(_WINDOW_ATTRS),
    infer=_infer_pool,
    rf="window",
    normalize=_normalize_pool,
)

AVG_POOL = OpDef(
    name="avg_pool",
    doc="Mean over each kernel window; count_include_pad divides by the full window.",
    attrs={**_WINDOW_ATTRS, "count_include_pad": a.Attr(a.boolean, True)},
    infer=_infer_pool,
    rf="window",
    normalize=_normalize_pool,
)


def _infer_global(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "global pooling")
    return (x[0], x[1], 1, 1)


GLOBAL_AVG_POOL = OpDef(
    name="global_avg_pool",
    doc="Mean over all of H×W; output C×1×1.",
    attrs={},
    infer=_infer_global,
    rf="global",
)
GLOBAL_MAX_POOL = OpDef(
    name="global_max_pool",
    doc="Maximum over all of H×W; output C×1×1.",
    attrs={},
    infer=_infer_global,
    rf="global",
)


def _infer_adaptive(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "adaptive pooling")
    return (x[0], x[1], *attrs["output"])


ADAPTIVE_AVG_POOL = OpDef(
    name="adaptive_avg_pool",
    doc="Mean over bins [floor(i·H/h), ceil((i+1)·H/h)) giving an h×w output (PyTorch's rule).",
    attrs={"output": a.Attr(a.positive_pair)},
    infer=_infer_adaptive,
    rf="global",
)
ADAPTIVE_MAX_POOL = OpDef(
    name="adaptive_max_pool",
    doc="Maximum over the same bins as adaptive_avg_pool.",
    attrs={"output": a.Attr(a.positive_pair)},
    infer=_infer_adaptive,
    rf="global",
)


def _infer_spp(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "spp")
    return (x[0], x[1] * sum(level * level for level in attrs["levels"]))


SPP = OpDef(
    name="spp",
    doc="Spatial pyramid pooling (He et al. 2014): for each level l an adaptive pool to "
    "l×l, flattened (channel-major) and concatenated in level order; a vector of C·Σl².",
    attrs={"levels": a.Attr(a.positive_int_list), "mode": a.Attr(a.one_of("max", "avg"), "max")},
    infer=_infer_spp,
    rf="global",
)

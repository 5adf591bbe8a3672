"""Ops that reshape, combine or resize tensors, and the fully connected layer."""

from __future__ import annotations

from netc.compiler import symbolic as sym
from netc.compiler.ops import attrs as a
from netc.compiler.ops.base import Attrs, OpDef, Shape, ShapeError, format_shape, require_rank
from netc.compiler.ops.spatial import check_positive


def _infer_flatten(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    open_dims = [str(d) for d in x[1:] if not sym.is_static(d)]
    if open_dims:
        raise ShapeError(
            "flatten needs a fixed size, but the input's height and width are open",
            found=f"shape {format_shape(x)}",
            hint="give the network input a fixed H and W, or pool to a fixed size first "
            "(global_avg_pool, adaptive_avg_pool or spp)",
        )
    features = 1
    for d in x[1:]:
        features *= sym.static(d)
    return (x[0], features)


FLATTEN = OpDef(
    name="flatten",
    doc="N×C×H×W → N×(C·H·W), channel-major (PyTorch's order).",
    attrs={},
    infer=_infer_flatten,
    rf="flatten",
)


def _infer_fc(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 2, "fc")
    return (x[0], attrs["units"])


def _fc_params(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    params: dict[str, tuple[int, ...]] = {"weight": (attrs["units"], sym.static(inputs[0][1]))}
    if attrs["bias"]:
        params["bias"] = (attrs["units"],)
    return params


FC = OpDef(
    name="fc",
    doc="Fully connected: y = W·x + b, W of shape (units, F).",
    attrs={"units": a.Attr(a.positive_int), "bias": a.Attr(a.boolean, True)},
    infer=_infer_fc,
    rf="dense",
    params=_fc_params,
    macs=lambda attrs, inputs, out: inputs[0][1] * attrs["units"],
    tags=frozenset({"weighted"}),
)


def _mismatch(index: int, shape: Shape, first: Shape, what: str) -> ShapeError:
    if _independent(shape, first):
        return ShapeError(
            f"{what} inputs' sizes are not known to be equal: input 1's sizes "
            f"{_follow(first)} and input {index + 1}'s {_follow(shape)}",
            expected=f"{format_shape(first)} (input 1)",
            found=f"{format_shape(shape)} (input {index + 1})",
            hint="if the network's inputs always have the same size, give them the same named "
            "sizes (e.g. [3, H, W] on both); else crop, pool or resize to a fixed size first",
        )
    return ShapeError(
        f"{what} inputs disagree: input {index + 1} does not match input 1",
        expected=f"{format_shape(first)} (input 1)",
        found=f"{format_shape(shape)} (input {index + 1})",
        hint="insert a crop, pool or conv so the shapes agree"
        if what == "add"
        else "all dimensions but the concat axis must match",
    )


def _independent(shape: Shape, first: Shape) -> bool:
    """Some dimension pair is open and in different variables (two inputs' own sizes)."""
    return len(shape) == len(first) and any(
        (sym.variables(x) or sym.variables(y)) and sym.variables(x) != sym.variables(y)
        for x, y in zip(shape[1:], first[1:])
    )


def _follow(shape: Shape) -> str:
    names = list(dict.fromkeys(name for d in shape[1:] for name in sorted(sym.variables(d))))
    return "follow " + ", ".join(names) if names else "are fixed"


def _infer_concat(attrs: Attrs, inputs: list[Shape]) -> Shape:
    first = inputs[0]
    rank = len(first)
    axis = attrs["axis"] % rank if -rank <= attrs["axis"] < rank else None
    if axis in (None, 0):
        raise ShapeError(
            "concat axis out of range (or the batch axis)",
            expected=f"an axis in 1..{rank - 1}",
            found=str(attrs["axis"]),
            attr="axis",
        )
    for index, shape in enumerate(inputs):
        if len(shape) != rank or not all(
            sym.probably_equal(shape[i], first[i]) for i in range(rank) if i != axis
        ):
            raise _mismatch(index, shape, first, "concat")
    sizes = [shape[axis] for shape in inputs]
    if not all(sym.is_static(size) for size in sizes):
        raise ShapeError(
            "concat along an open (H or W) axis is not supported",
            found="sizes " + ", ".join(map(str, sizes)),
            hint="concatenate along channels (axis 1)",
        )
    return (*first[:axis], sum(sizes), *first[axis + 1 :])


CONCAT = OpDef(
    name="concat",
    doc="Joins inputs along `axis` (default: channels).",
    attrs={"axis": a.Attr(a.any_int, 1)},
    infer=_infer_concat,
    rf="merge",
    min_inputs=2,
    max_inputs=None,
)


def _infer_add(attrs: Attrs, inputs: list[Shape]) -> Shape:
    first = inputs[0]
    for index, shape in enumerate(inputs):
        if len(shape) != len(first) or not all(
            sym.probably_equal(x, y) for x, y in zip(shape, first)
        ):
            raise _mismatch(index, shape, first, "add")
    return first


ADD = OpDef(
    name="add",
    doc="Elementwise sum of inputs of one shape.",
    attrs={},
    infer=_infer_add,
    rf="merge",
    min_inputs=2,
    max_inputs=None,
)


def _infer_crop(attrs: Attrs, inputs: list[Shape]) -> Shape:
    x, ref = inputs
    require_rank(x, 4, "crop")
    require_rank(ref, 4, "crop (reference)")
    offset = attrs["offset"]
    if offset == "auto":
        raise ShapeError("crop offset was not resolved")  # lowering resolves 'auto' first
    for i, axis in enumerate(("height", "width")):
        end_x, end_ref = x[2 + i], sym.add(ref[2 + i], offset[i])
        # a reference size of another variable (another input's own size) can outgrow x
        independent = not sym.variables(end_ref) <= sym.variables(end_x)
        fits = not independent and all(
            sym.evaluate(end_x, env) >= sym.evaluate(end_ref, env)
            for n in sym.SAMPLE_SIZES
            for env in [dict.fromkeys(sym.variables(end_x) | sym.variables(end_ref), n)]
        )
        if not fits:
            raise ShapeError(
                f"crop window does not fit inside the input along the {axis}",
                expected=f"input {axis} >= offset {offset[i]} + reference {axis} {ref[2 + i]}",
                found=f"input {axis} {x[2 + i]}",
                hint=f"the reference {axis} follows "
                + ", ".join(sorted(sym.variables(end_ref) - sym.variables(end_x)))
                + ", which the input's does not: it can be the larger"
                if independent
                else None,
            )
    return (x[0], x[1], ref[2], ref[3])


CROP = OpDef(
    name="crop",
    doc="x[:, :, oh:oh+H_ref, ow:ow+W_ref] for inputs [x, reference]; offset 'auto' aligns "
    "the two receptive fields (as FCN's crop layers do).",
    attrs={"offset": a.Attr(a.crop_offset, "auto")},
    infer=_infer_crop,
    rf="crop",
    min_inputs=2,
    max_inputs=2,
)


def _normalize_upsample(attrs: Attrs) -> Attrs:
    if (attrs["scale"] is None) == (attrs["size"] is None):
        raise ShapeError(
            "upsample needs exactly one of 'scale' and 'size'",
            found="both" if attrs["scale"] is not None else "neither",
        )
    if attrs["align_corners"] and attrs["mode"] == "nearest":
        raise ShapeError(
            "align_corners applies to bilinear mode only",
            found="mode 'nearest'",
            attr="align_corners",
        )
    return attrs


def _infer_upsample(attrs: Attrs, inputs: list[Shape]) -> Shape:
    (x,) = inputs
    require_rank(x, 4, "upsample")
    if attrs["size"] is not None:
        return (x[0], x[1], *attrs["size"])
    sh, sw = attrs["scale"]
    return (
        x[0],
        x[1],
        check_positive(sym.mul(x[2], sh), "upsample height"),
        check_positive(sym.mul(x[3], sw), "upsample width"),
    )


UPSAMPLE = OpDef(
    name="upsample",
    doc="Resizes H×W by an integer `scale` or to a fixed `size`, nearest or bilinear "
    "(half-pixel centres unless align_corners).",
    attrs={
        "scale": a.Attr(a.optional(a.positive_pair), None),
        "size": a.Attr(a.optional(a.positive_pair), None),
        "mode": a.Attr(a.one_of("nearest", "bilinear"), "nearest"),
        "align_corners": a.Attr(a.boolean, False),
    },
    infer=_infer_upsample,
    rf="upsample",
    normalize=_normalize_upsample,
)

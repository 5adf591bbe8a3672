"""Ops that keep the shape: normalisation, activations, dropout."""

from __future__ import annotations

from netc.compiler import symbolic as sym
from netc.compiler.ops import attrs as a
from netc.compiler.ops.base import Attrs, OpDef, Shape, ShapeError, require_rank


def _same_shape(attrs: Attrs, inputs: list[Shape]) -> Shape:
    return inputs[0]


def _feature_map(attrs: Attrs, inputs: list[Shape]) -> Shape:
    require_rank(inputs[0], 4, "this op")
    return inputs[0]


def _bn_shape(attrs: Attrs, inputs: list[Shape]) -> Shape:
    if len(inputs[0]) not in (2, 4):
        raise ShapeError(
            "batch_norm needs (N, C) or (N, C, H, W) input", found=f"rank {len(inputs[0])}"
        )
    return inputs[0]


def _bn_params(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    channels = sym.static(inputs[0][1])
    return {"weight": (channels,), "bias": (channels,)} if attrs["affine"] else {}


def _bn_buffers(attrs: Attrs, inputs: list[Shape]) -> dict[str, tuple[int, ...]]:
    channels = sym.static(inputs[0][1])
    return {"running_mean": (channels,), "running_var": (channels,)}


BATCH_NORM = OpDef(
    name="batch_norm",
    doc="y = (x - mean) / sqrt(var + eps) · γ + β per channel; batch statistics in "
    "training, running statistics (updated with momentum) at inference.",
    attrs={
        "eps": a.Attr(a.number(low=0.0), 1e-5),
        "momentum": a.Attr(a.number(0.0, 1.0), 0.1),
        "affine": a.Attr(a.boolean, True),
    },
    infer=_bn_shape,
    rf="pointwise",
    params=_bn_params,
    buffers=_bn_buffers,
    tags=frozenset({"weighted"}),
)

LRN = OpDef(
    name="lrn",
    doc="Local response normalisation across `size` neighbouring channels: "
    "y = x / (k + α/size · Σ x²)^β (PyTorch's and ONNX's convention).",
    attrs={
        "size": a.Attr(a.positive_int),
        "alpha": a.Attr(a.number(), 1e-4),
        "beta": a.Attr(a.number(), 0.75),
        "k": a.Attr(a.number(), 1.0),
    },
    infer=_feature_map,
    rf="pointwise",
)

RELU = OpDef(name="relu", doc="max(x, 0)", attrs={}, infer=_same_shape, rf="pointwise")
LEAKY_RELU = OpDef(
    name="leaky_relu",
    doc="x if x > 0 else slope·x",
    attrs={"slope": a.Attr(a.number(), 0.01)},
    infer=_same_shape,
    rf="pointwise",
)
SIGMOID = OpDef(name="sigmoid", doc="1 / (1 + e^-x)", attrs={}, infer=_same_shape, rf="pointwise")
TANH = OpDef(name="tanh", doc="tanh(x)", attrs={}, infer=_same_shape, rf="pointwise")


def _softmax_shape(attrs: Attrs, inputs: list[Shape]) -> Shape:
    rank = len(inputs[0])
    if not -rank <= attrs["axis"] < rank or attrs["axis"] % rank == 0:
        raise ShapeError(
            "softmax axis out of range (or the batch axis)",
            expected=f"an axis in 1..{rank - 1}",
            found=str(attrs["axis"]),
            attr="axis",
        )
    return inputs[0]


SOFTMAX = OpDef(
    name="softmax",
    doc="exp(x) / Σ exp(x) along `axis` (default: channels)",
    attrs={"axis": a.Attr(a.any_int, 1)},
    infer=_softmax_shape,
    rf="pointwise",
)
DROPOUT = OpDef(
    name="dropout",
    doc="Zeroes elements with probability p in training (scaling the rest by "
    "1/(1-p)); the identity at inference. p is the drop probability, as in PyTorch: "
    "Srivastava et al. and CS231n write p for the keep probability.",
    attrs={"p": a.Attr(a.drop_probability, 0.5)},
    infer=_same_shape,
    rf="pointwise",
)

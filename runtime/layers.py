"""One PyTorch module or function per IR op (the runtime's op table).

`make_layer(node, input_shapes)` returns an `nn.Module` for ops with state or
hyper-parameters, or a plain function for merges and crops, which the module
builder places as `call_function` nodes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from functools import reduce
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netc.compiler import symbolic as sym
from netc.compiler.ir import Node, Shape
from netc.errors import InternalError


class SpatialPyramidPool(nn.Module):
    """Per level l, an adaptive pool to l×l, flattened channel-major; levels concatenated."""

    def __init__(self, levels: Sequence[int], mode: str) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.adaptive_max_pool2d if self.mode == "max" else F.adaptive_avg_pool2d
        return torch.cat([torch.flatten(pool(x, level), 1) for level in self.levels], 1)

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, mode={self.mode}"


class PaddedConv2d(nn.Conv2d):
    """A conv with asymmetric zero padding (top, left, bottom, right), e.g. 'same' with an
    even kernel; parameters are named as in nn.Conv2d."""

    def __init__(self, *, pads: tuple[int, int, int, int], **kwargs: Any) -> None:
        super().__init__(padding=0, **kwargs)
        top, left, bottom, right = pads
        self.pads = (left, right, top, bottom)  # F.pad's order: last dim first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


def crop(x: torch.Tensor, reference: torch.Tensor, top: int, left: int) -> torch.Tensor:
    """x[:, :, top:top+H_ref, left:left+W_ref]"""
    return x[:, :, top : top + reference.shape[2], left : left + reference.shape[3]]


def add(*inputs: torch.Tensor) -> torch.Tensor:
    return reduce(operator.add, inputs)


def _conv(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    top, left, bottom, right = a["padding"]
    common = dict(
        in_channels=shapes[0][1],
        out_channels=a["channels"],
        kernel_size=a["kernel"],
        stride=a["stride"],
        dilation=a["dilation"],
        groups=a["groups"],
        bias=a["bias"],
    )
    if (top, left) == (bottom, right):
        return nn.Conv2d(padding=(top, left), **common)
    return PaddedConv2d(pads=a["padding"], **common)


def _conv_transpose(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    return nn.ConvTranspose2d(
        sym.static(shapes[0][1]),
        a["channels"],
        a["kernel"],
        stride=a["stride"],
        padding=a["padding"][:2],
        output_padding=a["output_padding"],
        groups=a["groups"],
        bias=a["bias"],
        dilation=a["dilation"],
    )


def _pool(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    if node.op == "max_pool":
        return nn.MaxPool2d(a["kernel"], a["stride"], a["padding"][:2], ceil_mode=a["ceil_mode"])
    return nn.AvgPool2d(
        a["kernel"],
        a["stride"],
        a["padding"][:2],
        ceil_mode=a["ceil_mode"],
        count_include_pad=a["count_include_pad"],
    )


def _batch_norm(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    kind = nn.BatchNorm2d if len(shapes[0]) == 4 else nn.BatchNorm1d
    return kind(sym.static(shapes[0][1]), eps=a["eps"], momentum=a["momentum"], affine=a["affine"])


def _upsample(node: Node, shapes: list[Shape]) -> nn.Module:
    a = node.attrs
    align = a["align_corners"] if a["mode"] == "bilinear" else None
    if a["size"] is not None:
        return nn.Upsample(size=a["size"], mode=a["mode"], align_corners=align)
    return nn.Upsample(
        scale_factor=tuple(float(s) for s in a["scale"]), mode=a["mode"], align_corners=align
    )


_MODULES: dict[str, Callable[[Node, list[Shape]], nn.Module]] = {
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "max_pool": _pool,
    "avg_pool": _pool,
    "global_avg_pool": lambda n, s: nn.AdaptiveAvgPool2d(1),
    "global_max_pool": lambda n, s: nn.AdaptiveMaxPool2d(1),
    "adaptive_avg_pool": lambda n, s: nn.AdaptiveAvgPool2d(n.attrs["output"]),
    "adaptive_max_pool": lambda n, s: nn.AdaptiveMaxPool2d(n.attrs["output"]),
    "spp": lambda n, s: SpatialPyramidPool(n.attrs["levels"], n.attrs["mode"]),
    "batch_norm": _batch_norm,
    "lrn": lambda n, s: nn.LocalResponseNorm(
        n.attrs["size"], n.attrs["alpha"], n.attrs["beta"], n.attrs["k"]
    ),
    "relu": lambda n, s: nn.ReLU(),
    "leaky_relu": lambda n, s: nn.LeakyReLU(n.attrs["slope"]),
    "sigmoid": lambda n, s: nn.Sigmoid(),
    "tanh": lambda n, s: nn.Tanh(),
    "softmax": lambda n, s: nn.Softmax(dim=n.attrs["axis"]),
    "dropout": lambda n, s: nn.Dropout(n.attrs["p"]),
    "flatten": lambda n, s: nn.Flatten(),
    "fc": lambda n, s: nn.Linear(sym.static(s[0][1]), n.attrs["units"], bias=n.attrs["bias"]),
    "upsample": _upsample,
}

FUNCTION_OPS = ("add", "concat", "crop")


def make_layer(node: Node, shapes: list[Shape], *, inplace: bool = False) -> nn.Module:
    """The nn.Module computing `node` (for ops not in FUNCTION_OPS).

    `inplace` lets an activation overwrite its input, which the caller allows
    only when nothing else reads that input (saves memory and a copy).
    """
    if node.op == "relu":
        return nn.ReLU(inplace=inplace)
    if node.op == "leaky_relu":
        return nn.LeakyReLU(node.attrs["slope"], inplace=inplace)
    try:
        return _MODULES[node.op](node, shapes)
    except KeyError:
        raise InternalError(
            f"no PyTorch lowering for op '{node.op}' (node '{node.name}')"
        ) from None

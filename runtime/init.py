"""Weight initialisation as each layer's `init` says, and freezing.

| kind | weight |
| --- | --- |
| default | PyTorch's own initialisation for the layer |
| gaussian | N(0, std²) |
| gaussian_sqrt_n | N(0, 1/n), n = fan-in (the "calibrated" rule: unit output variance) |
| xavier | Glorot uniform, U(-a, a), a = sqrt(6 / (fan_in + fan_out)) |
| he | Kaiming normal for ReLU, N(0, 2/n), n = fan-in or fan-out (`mode`) |
| bilinear | bilinear interpolation kernel in every (c, c) slice (FCN's upsampling) |

Biases are set to the layer's `bias` constant (0 by default) for every kind
but `default`. `trainable: false` turns off requires_grad.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from netc.compiler.ir import Graph, Node


def _fans(weight: torch.Tensor, transposed: bool) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    fan_in, fan_out = weight.shape[1] * receptive, weight.shape[0] * receptive
    return (fan_out, fan_in) if transposed else (fan_in, fan_out)


def bilinear_kernel(weight: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling filter on the diagonal (c, c) of a (Cin, Cout, k, k) weight."""
    cin, cout, kh, kw = weight.shape
    kernel = torch.ones(kh, kw, dtype=weight.dtype)
    for axis, size in ((0, kh), (1, kw)):
        factor = (size + 1) // 2
        center = factor - 1 if size % 2 == 1 else factor - 0.5
        ramp = 1 - (torch.arange(size, dtype=weight.dtype) - center).abs() / factor
        kernel = kernel * (ramp.view(-1, 1) if axis == 0 else ramp.view(1, -1))
    result = torch.zeros_like(weight)
    for c in range(min(cin, cout)):
        result[c, c] = kernel
    return result


def _init_weight(node: Node, module: nn.Module, generator: torch.Generator | None) -> None:
    spec, weight = node.init, module.get_parameter("weight")
    transposed = node.op == "conv_transpose"
    fan_in, fan_out = _fans(weight, transposed)
    with torch.no_grad():
        if spec.kind == "gaussian":
            assert spec.std is not None  # lowering gives a gaussian init its default std
            weight.normal_(0.0, spec.std, generator=generator)
        elif spec.kind == "gaussian_sqrt_n":
            weight.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
        elif spec.kind == "xavier":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-bound, bound, generator=generator)
        elif spec.kind == "he":
            fan = fan_in if spec.mode == "fan_in" else fan_out
            weight.normal_(0.0, math.sqrt(2.0 / fan), generator=generator)
        elif spec.kind == "bilinear":
            weight.copy_(bilinear_kernel(weight))
        bias = getattr(module, "bias", None)
        if bias is not None:
            bias.fill_(spec.bias)


def _default_init(module: nn.Module, generator: torch.Generator | None) -> None:
    """PyTorch's default rules, drawn from `generator` so a seed fixes them."""
    if generator is None:
        return  # the modules were just built with PyTorch's defaults
    with torch.no_grad():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan_in, _ = _fans(module.weight, False)  # PyTorch's rule, even for transposed
            # kaiming_uniform_(a=sqrt(5)) → U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
            module.weight.uniform_(-bound, bound, generator=generator)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound, generator=generator)


def initialize(module: nn.Module, graph: Graph, generator: torch.Generator | None) -> None:
    """Apply every node's `init` and `trainable` to the module built from `graph`."""
    for node in graph.nodes:
        try:
            layer = module.get_submodule(node.name)
        except AttributeError:
            continue  # function ops (add, concat, crop) have no module
        if getattr(layer, "weight", None) is not None and node.op != "batch_norm":
            if node.init.kind == "default":
                _default_init(layer, generator)
            else:
                _init_weight(node, layer, generator)
        if not node.trainable:
            # also for layers without parameters (affine-free BN); torch types Module's
            # attributes as tensors and modules, but any value may be set
            layer.netc_frozen = True  # type: ignore[assignment]
            for param in layer.parameters(recurse=False):
                param.requires_grad_(False)

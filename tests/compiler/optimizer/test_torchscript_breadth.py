"""The whole pipeline on TorchScript exports that carry constants and shape chains (issue 17).

torch.onnx's TorchScript exporter at opset 17 with BN kept and no exporter
constant folding leaves what timm's models showed: Constant nodes for every
Clip bound and slice index, Unsqueeze chains, `cat([a, b], 1)[:, :C]`
slices (GhostNet), a reshaped layer-scale parameter times a conv
(ConvNeXt), and a flatten whose target is computed from the open batch. A
tiny net with all of them must come out with only its convs, pool and fc, at
fixed and at open sizes, verified (at two sizes when they are open).
"""

import io
import warnings
from collections import Counter

import onnx
import pytest
import torch
from torch import nn

from netc.compiler.optimizer.api import optimize_model


class GhostLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU6())
        self.cheap = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4))
        self.mix = nn.Conv2d(8, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        y = torch.cat([a, self.cheap(a)], dim=1)[:, :8]
        y = self.mix(y) * self.gamma.reshape(1, -1, 1, 1)
        y = y.mean((2, 3))
        return self.fc(y.reshape(y.shape[0], -1))


def export(module: nn.Module, open_sizes: bool) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            torch.randn(1, 3, 16, 16),
            buffer,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["x"],
            dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}} if open_sizes else None,
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("open_sizes", [False, True], ids=["fixed", "open"])
def test_constants_shape_chains_slices_and_layer_scale_all_fold(open_sizes):
    torch.manual_seed(0)
    net = GhostLike().eval()
    for bn in (net.primary[1], net.cheap[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    raw = export(net, open_sizes)
    before = Counter(n.op_type for n in raw.graph.node)
    assert before["Constant"] and before["Slice"] and before["BatchNormalization"] == 2
    result = optimize_model(raw, name="ghost-like")  # raises unless it verifies
    after = Counter(n.op_type for n in result.model.graph.node)
    # at open sizes too: the flatten's target, computed from the open batch, is its
    # input's own shape, so the Reshape and its Shape → Gather → … chain go
    assert after == Counter({"Conv": 3, "Clip": 1, "Concat": 1, "ReduceMean": 1, "Gemm": 1})
    shapes = result.verification.input_shapes
    assert len(shapes) == (2 if open_sizes else 1)

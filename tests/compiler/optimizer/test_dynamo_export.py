"""A net exported by torch.onnx's dynamo exporter goes through the new passes cleanly.

The dynamo exporter already folds BN into the conv; what it leaves for netc is
a layer-scale Mul by a reshaped parameter after a conv and a Reshape whose
target comes from the open batch size. Both must go, and the result must
verify at two spatial sizes with the batch, height and width left open.
"""

import warnings
from collections import Counter

import pytest
import torch
from torch import nn

from netc.compiler.optimizer.api import optimize_model

pytest.importorskip("onnxscript")  # the dynamo exporter writes ONNX through it


class LayerScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8))
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.depthwise(y) * self.gamma.reshape(1, -1, 1, 1) + y
        y = y.mean((2, 3))
        return self.fc(y.reshape(y.shape[0], -1))


def test_dynamo_export_with_open_sizes_optimizes_and_verifies():
    torch.manual_seed(0)
    net = LayerScaleNet().eval()
    for bn in (net.stem[1], net.depthwise[1]):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            net,
            (torch.randn(2, 3, 16, 16),),
            dynamo=True,
            dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
        )
    raw = program.model_proto
    before = Counter(n.op_type for n in raw.graph.node)
    assert before["BatchNormalization"] == 0 and before["Mul"] == 1 and before["Reshape"] == 1
    result = optimize_model(raw, name="dynamo export")  # raises unless it verifies
    after = Counter(n.op_type for n in result.model.graph.node)
    assert after == before - Counter({"Mul": 1, "Reshape": 1})
    assert len(result.verification.input_shapes) == 2  # two spatial sizes
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]

"""onnxruntime's own Conv+activation fusion still fires on what netc writes (issue 17, item 5).

Runtimes fuse a Conv with the activation right after it; a netc rewrite that
left anything between them (as the flagged maxpool_ahead does) would cost that
fusion. onnxruntime issue #27262 reports fusions that match only older Conv
opsets, so this checks the opset netc exports (17) rather than trusting it:
with onnxruntime 1.31 every activation below fuses at opsets 11-22 alike.
"""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import GraphBuilder, ops, optimize

from netc.compiler.onnx_export import OPSET

ACTIVATIONS = ("Relu", "Clip", "Sigmoid", "LeakyRelu", "HardSigmoid")


def ort_optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = os.path.join(tmp_path, "ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def activation(g, op, x):
    if op == "Clip":  # ReLU6, as torch exports it
        return g.node(
            op, [x, g.const(g.fresh("lo"), np.float32(0)), g.const(g.fresh("hi"), np.float32(6))]
        )
    return g.node(op, [x])


@pytest.mark.parametrize("op", ACTIVATIONS)
def test_conv_activation_fuses_after_netc_folded_bn_and_scales(op, tmp_path):
    # conv → BN → act and conv → Mul(per-channel) → act: after netc, each conv meets its
    # activation directly and onnxruntime fuses the pair (it also folds BN and Mul itself,
    # but a runtime without those folds fuses only what netc hands it).
    g = GraphBuilder(opset=OPSET)
    x = g.input("x", [1, 3, 8, 8])
    y = activation(g, op, g.bn(g.conv(x, 3, 4), 4))
    scale = g.const("s", np.linspace(0.5, 2.0, 4, dtype=np.float32).reshape(4, 1, 1))
    y = activation(g, op, g.node("Mul", [g.conv(y, 4, 4), scale]))
    model = g.build(y)
    optimized, _ = optimize(model)
    assert ops(optimized) == {"Conv": 2, op: 2}
    fused = ort_optimized(optimized, tmp_path)
    assert ops(fused) == {"FusedConv": 2}

"""Verification: both models in onnxruntime on the same seeded inputs, the worst element named,
and the first pass after which the outputs go wrong."""

import numpy as np
import onnx_ir as ir
import pytest
from builders import GraphBuilder

from netc.compiler.optimizer.api import optimize_model
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval, IdentityElimination
from netc.compiler.optimizer.passes.conv_bn import ConvBatchNormFusion
from netc.compiler.optimizer.verify import VerificationError, verify
from netc.errors import UserError


def conv_net(shape=("N", 3, "H", "W"), dtype=np.float32):
    g = GraphBuilder(dtype=dtype)
    x = g.input("x", list(shape))
    y = g.node("Relu", [g.bn(g.conv(x, 3, 4, name="conv"), 4)])
    return g.build(g.node("Identity", [y], name="out"))


class CorruptBias(OptimizerPass):
    """A deliberately wrong pass: adds 1e-3 to every conv bias."""

    name = "corrupt_bias"

    def call(self, model):
        for node in model.graph:
            if node.op_type == "Conv" and len(node.inputs) > 2:
                bias = node.inputs[2]
                bias.const_value = ir.tensor(bias.const_value.numpy() + 1e-3, name=bias.name)
                self.note(f"{node.name} bias changed")
        return ir.passes.PassResult(model, True)


def test_identical_models_agree_at_two_open_sizes():
    model = conv_net()
    result = verify(model, model)
    assert result.ok and result.max_abs == 0.0
    assert [s["x"] for s in result.input_shapes] == [(2, 3, 64, 64), (2, 3, 96, 96)]
    assert "outputs match at input [2, 3, 64, 64] and [2, 3, 96, 96]" in result.summary()


def test_static_inputs_and_given_shapes_run_once():
    assert [
        s["x"] for s in verify(conv_net((1, 3, 8, 8)), conv_net((1, 3, 8, 8))).input_shapes
    ] == [(1, 3, 8, 8)]
    given = verify(conv_net(), conv_net(), input_shapes={"x": (1, 3, 10, 12)})
    assert [s["x"] for s in given.input_shapes] == [(1, 3, 10, 12)]


def test_a_small_change_is_caught_and_the_worst_element_named():
    model = conv_net()
    changed = conv_net()
    bias = next(t for t in changed.graph.initializer if t.name == "conv.bias")
    values = np.frombuffer(bias.raw_data, np.float32).copy()
    values[2] += 1e-3
    bias.raw_data = values.tobytes()
    result = verify(model, changed)
    assert not result.ok
    assert result.worst.output == "out" and result.worst.index[1] == 2  # channel 2
    assert "output 'out'[" in result.summary()


def test_half_precision_outputs_get_the_wider_tolerance():
    result = verify(conv_net(dtype=np.float16), conv_net(dtype=np.float16))
    assert result.ok and result.tolerances["out"] == (1e-2, 1e-2)
    assert "fp16 outputs rtol 0.01" in result.summary()


def test_an_optimized_model_that_does_not_run_fails_the_check():
    model = conv_net()
    broken = conv_net()
    broken.graph.node[0].op_type = "NoSuchOp"
    result = verify(model, broken)
    assert not result.ok and "does not run" in result.summary()


def test_an_original_onnxruntime_cannot_run_is_a_user_error():
    model = conv_net()
    model.graph.node[0].domain = "com.example"
    model.opset_import.add(domain="com.example", version=1)
    with pytest.raises(UserError, match=r"cannot verify .*--no-verify"):
        verify(model, model)


def test_the_first_pass_that_breaks_the_outputs_is_named():
    passes = [IdentityElimination, ConvBatchNormFusion, CorruptBias, DeadNodeRemoval]
    with pytest.raises(VerificationError) as caught:
        optimize_model(conv_net(), passes=passes, name="net.onnx")
    message = str(caught.value)
    assert "first wrong after pass corrupt_bias" in message
    assert "net.onnx" in message and "output 'out'" in message and "nothing was written" in message


def test_optimize_model_reports_totals_and_verification():
    result = optimize_model(conv_net())
    assert (
        result.ops_before["BatchNormalization"] == 1 and result.ops_after["BatchNormalization"] == 0
    )
    assert result.verification.ok
    assert result.macs_saved == 4 * 224 * 224  # one multiply-add per BN element, batch 1
    text = result.report()
    assert "BatchNormalization 1 → 0" in text and "verified: outputs match" in text

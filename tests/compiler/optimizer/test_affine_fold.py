"""AffineFolding: constant Mul/Div/Add/Sub folded into linear layers, chains merged."""

import numpy as np
import pytest
from builders import GraphBuilder, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.affine_fold import AffineFolding
from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval

PASSES = (AffineFolding, DeadNodeRemoval)


def assert_same(before, after):
    feeds = random_feeds(before)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def signed(g, name, shape):
    """Values of both signs away from 0 and 1, so a missed or wrong fold shows."""
    data = g.rng.uniform(0.5, 2.0, size=shape) * g.rng.choice([-1.0, 1.0], size=shape)
    return g.const(name, data.astype(np.float32))


@pytest.mark.parametrize("op", ["Mul", "Div", "Add", "Sub"])
@pytest.mark.parametrize("layer", ["Conv", "ConvTranspose", "depthwise"])
def test_per_channel_arithmetic_after_a_conv_folds_into_it(layer, op):
    # Case 1.
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    if layer == "ConvTranspose":
        y = g.conv_transpose(x, 4, 6, bias=False)
    else:
        y = g.conv(x, 4, 4 if layer == "depthwise" else 6, group=4 if layer == "depthwise" else 1)
    channels = 4 if layer == "depthwise" else 6
    model = g.build(g.node("Relu", [g.node(op, [y, signed(g, "c", [channels, 1, 1])])]))
    optimized, reports = optimize(model, *PASSES)
    assert op not in ops(optimized) and ops(optimized)["Relu"] == 1
    assert reports[0].notes
    assert_same(model, optimized)


@pytest.mark.parametrize("layer", ["Gemm", "MatMul+Add"])
def test_per_feature_scale_after_a_fully_connected_layer_folds(layer):
    g = GraphBuilder()
    x = g.input("x", [2, 5])
    if layer == "Gemm":
        y = g.node("Gemm", [x, g.param("w", [3, 5]), g.param("b", [3])], transB=1, beta=0.5)
    else:
        y = g.node("Add", [g.node("MatMul", [x, g.param("w", [5, 3])]), g.param("b", [3])])
    scaled = g.node("Mul", [signed(g, "s", [3]), y])  # the constant first
    model = g.build(g.node("Sub", [g.const("t", np.float32([1, 2, 3])), scaled]))  # t − x
    optimized, _ = optimize(model, *PASSES)
    assert "Mul" not in ops(optimized) and "Sub" not in ops(optimized)
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("shape", "reason"),
    [([1, 1, 6, 6], "not one value per channel"), ([2, 1, 6, 1, 1], "more dims")],
)
def test_a_constant_that_is_not_per_channel_is_refused(shape, reason):
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    model = g.build(g.node("Mul", [g.conv(x, 4, 6), signed(g, "c", shape)]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized) == {"Conv": 1, "Mul": 1}
    assert any(reason in r for r in reports[0].refusals)
    assert_same(model, optimized)


def test_a_conv_output_read_elsewhere_is_refused():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    y = g.conv(x, 4, 6)
    model = g.build(g.node("Add", [g.node("Mul", [y, signed(g, "c", [6, 1, 1])]), y]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Mul"] == 1
    assert any("also feeds" in r for r in reports[0].refusals)
    assert_same(model, optimized)


@pytest.mark.parametrize("group", [1, 2, 4])
def test_a_per_channel_scale_before_a_padded_conv_folds_into_its_weights(group):
    # Case 2: zero padding commutes with a scale.
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    scaled = g.node("Mul", [g.node("Relu", [x]), signed(g, "s", [1, 4, 1, 1])])
    model = g.build(g.conv(scaled, 4, 8, group=group))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized) == {"Relu": 1, "Conv": 1}
    assert_same(model, optimized)


@pytest.mark.parametrize("group", [1, 2])
def test_a_scale_and_shift_before_an_unpadded_conv_fold_into_weights_and_bias(group):
    # Case 2 with t: W·(x·s + t) = (W·s)·x + W·t, where no padding can miss the shift.
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    y = g.node("Mul", [g.node("Relu", [x]), signed(g, "s", [1, 4, 1, 1])])
    y = g.node("Sub", [y, signed(g, "t", [4, 1, 1])])
    model = g.build(g.node("Conv", [y, g.param("w", [6, 4 // group, 3, 3])], group=group))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized) == {"Relu": 1, "Conv": 1}
    assert_same(model, optimized)


def test_a_shift_before_a_padded_conv_is_refused():
    # Case 2's caveat: the padded zeros would not be shifted.
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    shifted = g.node("Add", [g.node("Relu", [x]), signed(g, "t", [1, 4, 1, 1])])
    model = g.build(g.conv(shifted, 4, 8))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Add"] == 1
    assert any("before a padded conv would miss the zeros" in r for r in reports[0].refusals)
    assert_same(model, optimized)


def test_a_scale_that_broadcasts_one_channel_to_many_is_refused():
    g = GraphBuilder()
    x = g.input("x", [1, 1, 6, 6])
    scaled = g.node("Mul", [g.node("Relu", [x]), signed(g, "s", [1, 4, 1, 1])])
    model = g.build(g.conv(scaled, 4, 8))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Mul"] == 1
    assert any("channel count" in r for r in reports[0].refusals)
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("chain", "left"),
    [
        (["Mul", "Mul"], {"Mul": 1}),
        (["Mul", "Add", "Mul", "Sub"], {"Mul": 1, "Add": 1}),
        (["Add", "Sub", "Add"], {"Add": 1}),
        (["Div", "Mul"], {"Mul": 1}),
    ],
)
def test_chains_of_constant_arithmetic_merge(chain, left):
    # Case 3.
    g = GraphBuilder()
    x = g.input("x", [2, 3, 4])
    y = g.node("Relu", [x])
    for i, op in enumerate(chain):
        y = g.node(op, [y, signed(g, f"c{i}", [3, 1] if i % 2 else [4])])
    model = g.build(g.node("Neg", [y]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized) == {"Relu": 1, "Neg": 1, **left}
    assert any("elementwise nodes" in n for n in reports[0].notes)
    assert_same(model, optimized)


def test_a_chain_that_would_broadcast_its_input_larger_is_kept():
    g = GraphBuilder()
    x = g.input("x", [3, 1])
    y = g.node("Mul", [g.node("Relu", [x]), signed(g, "a", [3, 4])])
    model = g.build(g.node("Mul", [y, signed(g, "b", [3, 4])]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Mul"] == 2
    assert any("broadcast" in r for r in reports[0].refusals)
    assert_same(model, optimized)


def test_the_half_that_ends_a_gelu_stays_for_onnxruntime_to_fuse():
    # Gelu exported in pieces, then a 1x1 conv: folding the ½ into the conv would be
    # correct (case 2) but would leave onnxruntime a pattern it no longer fuses.
    g = GraphBuilder()
    x = g.input("x", [1, 4, 6, 6])
    y = g.conv(x, 4, 4, k=1)
    erf = g.node("Erf", [g.node("Div", [y, g.const("root2", np.float32(np.sqrt(2)))])])
    gelu = g.node(
        "Mul",
        [
            g.node("Mul", [y, g.node("Add", [erf, g.const("one", np.float32(1))])]),
            g.const("half", np.float32(0.5)),
        ],
    )
    model = g.build(g.conv(gelu, 4, 4, k=1))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized) == ops(model)
    assert any("completes a Gelu pattern" in r for r in reports[0].refusals)


def test_per_channel_arithmetic_after_a_bn_that_stays_folds_into_it():
    # Case 4: BN after a Concat cannot fold into a conv, but the Mul → Add after it
    # (Caffe2's scale layer) folds into the BN's γ and β.
    g = GraphBuilder()
    x = g.input("x", [1, 2, 5, 5])
    joined = g.node("Concat", [g.node("Relu", [x]), g.node("Neg", [x])], axis=1)
    y = g.node("Mul", [g.bn(joined, 4), signed(g, "s", [1, 4, 1, 1])])
    model = g.build(g.node("Relu", [g.node("Add", [y, signed(g, "t", [4, 1, 1])])]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized) == {"Relu": 2, "Neg": 1, "Concat": 1, "BatchNormalization": 1}
    assert len(reports[0].notes) == 2
    assert_same(model, optimized)

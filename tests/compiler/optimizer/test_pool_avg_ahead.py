"""AvgPoolAhead: x → (1x1 conv | BN) → AveragePool becomes x → AveragePool → (conv | BN).

Each test builds a 3-5 node graph, runs the pass, checks the op order and
that onnxruntime gives the same outputs before and after on random inputs;
each refusal keeps the order and says why.
"""

import pytest
from builders import GraphBuilder, optimize, random_feeds, run
from helpers import assert_fp32_close

import netc
from netc.compiler.onnx_export import export_onnx
from netc.compiler.optimizer.api import optimize_model
from netc.compiler.optimizer.passes.pool_avg_ahead import AvgPoolAhead
from netc.runtime.module import build_module


def order(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_same(before, after, *, rtol, atol, **sizes):
    feeds = random_feeds(before, **sizes)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want, rtol=rtol, atol=atol)


def conv_pool(shape, *, bias, cin=8, cout=4, group=1, **pool):
    """x → Conv1x1 → AveragePool; pool attributes default to 2x2/2."""
    g = GraphBuilder()
    x = g.input("x", shape)
    y = g.conv(x, cin, cout, k=1, group=group, bias=bias)
    pool = {"kernel_shape": [2, 2], "strides": [2, 2], **pool}
    return g.build(g.node("AveragePool", [y], **pool))


def moved(model, **kwargs):
    optimized, (report,) = optimize(model, AvgPoolAhead, **kwargs)
    assert order(optimized)[-2:] == ["AveragePool", "Conv"], report.refusals
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)
    return report


def refused(model, reason: str):
    optimized, (report,) = optimize(model, AvgPoolAhead)
    assert order(optimized) == order(model)
    assert any(reason in r for r in report.refusals), report.refusals


def test_densenet_transition_saves_three_quarters_of_the_conv():
    # BN → ReLU → Conv1x1 → AvgPool 2x2/2, as in DenseNet's transition layers.
    g = GraphBuilder()
    x = g.input("x", [1, 8, 8, 8])
    y = g.node("Relu", [g.bn(x, 8)])
    y = g.conv(y, 8, 4, k=1, bias=False)
    model = g.build(g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, (report,) = optimize(model, AvgPoolAhead, static_input_shapes={"x": [1, 8, 8, 8]})
    assert order(optimized) == ["BatchNormalization", "Relu", "AveragePool", "Conv"]
    conv_macs = 4 * 8 * 8 * 8  # Cout·Cin per position, 8x8 positions
    assert report.macs_saved == conv_macs * 3 // 4
    assert "3/4 of its work" in report.notes[0]
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_zoo_densenet121_reports_the_transitions_saved_macs():
    # The whole pipeline, verified in onnxruntime. Transition t: 1x1 conv C → C/2
    # on an S×S map, then 2x2/2 pool; moving the pool first saves 3/4 of C·C/2·S².
    net = netc.load("densenet121")
    model = export_onnx(net.graph, build_module(net.graph).state_dict())
    result = optimize_model(model)
    assert result.verification.ok
    (report,) = [r for r in result.reports if r.name == AvgPoolAhead.name]
    transitions = [(256, 56), (512, 28), (1024, 14)]
    assert report.macs_saved == sum(c * c // 2 * s * s * 3 // 4 for c, s in transitions)
    assert report.macs_saved == 231_211_008 and len(report.notes) == 3


# --- Case 1: a linear map commutes with every average pool --------------------------------


@pytest.mark.parametrize(
    "pool",
    [
        {},
        {"pads": [1, 1, 1, 1], "count_include_pad": 1},
        {"pads": [1, 0, 1, 0], "count_include_pad": 0},
        {"ceil_mode": 1, "count_include_pad": 1},
        {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    ],
    ids=["plain", "zero-pad-counted", "pad-not-counted", "ceil-partial", "3x3/2-padded"],
)
def test_bias_free_conv_moves_whatever_the_padding(pool):
    moved(conv_pool([1, 8, 9, 9], bias=False, **pool))


def test_grouped_conv_moves():
    moved(conv_pool([1, 8, 8, 8], bias=False, group=2))


# --- Case 2: an affine map needs every divisor to be the window's count --------------------


@pytest.mark.parametrize(
    "pool",
    [
        {"pads": [1, 1, 1, 1], "count_include_pad": 0},
        {"ceil_mode": 1, "count_include_pad": 0},
        {"pads": [0, 0, 1, 1], "ceil_mode": 1, "count_include_pad": 0},
        {"ceil_mode": 1, "count_include_pad": 1},
    ],
    ids=["padded", "ceil-partial", "padded-ceil", "ceil-partial-unpadded-counted"],
)
def test_conv_with_bias_moves_when_no_padding_is_counted(pool):
    # A ceil_mode window's overhang is never counted, so with no explicit
    # padding every divisor is the window's count, whatever count_include_pad.
    moved(conv_pool([1, 8, 9, 9], bias=True, **pool))


def test_batch_norm_moves():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8, 8])
    model = g.build(g.node("AveragePool", [g.bn(x, 4)], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, (report,) = optimize(model, AvgPoolAhead, static_input_shapes={"x": [1, 4, 8, 8]})
    assert order(optimized) == ["AveragePool", "BatchNormalization"]
    assert report.macs_saved == 4 * (64 - 16)
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_open_sizes_report_the_fraction():
    model = conv_pool(["N", 8, "H", "W"], bias=True)
    optimized, (report,) = optimize(model, AvgPoolAhead)
    assert order(optimized) == ["AveragePool", "Conv"]
    assert report.macs_saved == 0 and "about 3/4" in report.notes[0]
    assert_same(model, optimized, rtol=1e-4, atol=1e-5, N=2, H=10, W=6)


def test_graph_output_keeps_its_name():
    model = conv_pool([1, 8, 8, 8], bias=True)
    optimized, _ = optimize(model, AvgPoolAhead)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    assert optimized.graph.node[-1].output[0] == model.graph.output[0].name


# --- Refusals -----------------------------------------------------------------------------


def test_counted_zero_padding_scales_the_bias():
    model = conv_pool([1, 8, 9, 9], bias=True, pads=[1, 1, 1, 1], count_include_pad=1)
    refused(model, "count_include_pad=1")


def test_counted_padding_with_ceil_mode():
    pool = {"pads": [0, 0, 1, 1], "ceil_mode": 1, "count_include_pad": 1}
    refused(conv_pool([1, 8, 9, 9], bias=True, **pool), "count_include_pad=1")


def test_pool_that_keeps_every_position():
    model = conv_pool([1, 8, 8, 8], bias=False, kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
    refused(model, "nothing to save")


def test_conv_output_with_another_reader():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 8, 8])
    y = g.conv(x, 8, 4, k=1, bias=False)
    pooled = g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])
    refused(g.build(pooled, g.node("Relu", [y])), "also feeds")


def test_conv_output_is_a_graph_output():
    g = GraphBuilder()
    x = g.input("x", [1, 8, 8, 8])
    y = g.conv(x, 8, 4, k=1, bias=False)
    refused(
        g.build(g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2]), y), "graph output"
    )


@pytest.mark.parametrize(
    ("k", "attrs", "reason"),
    [(3, {}, "not 1x1"), (1, {"strides": [2, 2]}, "strided")],
)
def test_conv_that_is_not_pointwise(k, attrs, reason):
    g = GraphBuilder()
    x = g.input("x", [1, 8, 8, 8])
    y = g.conv(x, 8, 4, k=k, bias=False, **attrs)
    refused(g.build(g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])), reason)


def test_batch_norm_in_training_mode():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8, 8])
    y = g.bn(x, 4, training_mode=1, n_out=3)
    refused(g.build(g.node("AveragePool", [y], kernel_shape=[2, 2], strides=[2, 2])), "training")

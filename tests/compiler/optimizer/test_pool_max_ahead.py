"""MaxPoolAhead: x → g → MaxPool becomes x → MaxPool → g for non-decreasing g.

Each test builds a 3-5 node graph, runs the pass, checks the op order and
that onnxruntime gives the same outputs before and after on random inputs;
each refusal keeps the order and says why.
"""

import numpy as np
import pytest
from builders import GraphBuilder, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.pool_max_ahead import MaxPoolAhead
from netc.compiler.optimizer.pipeline import selected

STEM_POOL = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}


def ahead(model, **kwargs):
    """Run the pass (flag enabled); (optimized model, its report)."""
    optimized, (report,) = optimize(model, MaxPoolAhead, enable={"maxpool_ahead"}, **kwargs)
    return optimized, report


def order(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_same(before, after, *, rtol, atol, **sizes):
    feeds = random_feeds(before, **sizes)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want, rtol=rtol, atol=atol)


def refused(model, reason: str):
    optimized, report = ahead(model)
    assert order(optimized) == order(model)
    assert any(reason in r for r in report.refusals), report.refusals


def test_runs_only_when_its_flag_is_enabled():
    assert MaxPoolAhead not in selected()
    assert MaxPoolAhead in selected({"maxpool_ahead"})


# --- Case 1: Relu, LeakyRelu (alpha ≥ 0), Clip --------------------------------------------


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Clip", {})],
)
@pytest.mark.parametrize(
    "pool",
    [STEM_POOL, {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}],
    ids=["padded", "ceil"],
)
def test_conv_act_pool_becomes_conv_pool_act(op, attrs, pool):
    g = GraphBuilder()
    x = g.input("x", [1, 3, 9, 9])
    y = g.node(op, [g.conv(x, 3, 4)], **attrs)
    model = g.build(g.node("MaxPool", [y], **pool))
    optimized, report = ahead(model, static_input_shapes={"x": [1, 3, 9, 9]})
    assert order(optimized) == ["Conv", "MaxPool", op]
    assert "81 → " in report.notes[0]
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_clip_with_bounds_moves():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.node("Clip", [x, g.const("lo", np.float32(0)), g.const("hi", np.float32(6))])
    model = g.build(g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, _ = ahead(model)
    assert order(optimized) == ["MaxPool", "Clip"]
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


# --- Case 2: BN with positive scale; the pool keeps moving up -----------------------------


def test_bn_relu_pool_becomes_pool_bn_relu():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8, 8])
    gamma = g.const("bn.scale", np.float32([0.5, 1.0, 1.5, 2.0]))
    bn = g.bn(x, 4, params=[gamma, *g.bn_params("stats", 4)[1:]])
    model = g.build(g.node("MaxPool", [g.node("Relu", [bn])], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, report = ahead(model, static_input_shapes={"x": [1, 4, 8, 8]})
    assert order(optimized) == ["MaxPool", "BatchNormalization", "Relu"]
    assert report.macs_saved == 4 * (64 - 16)  # BN's multiply-adds on the dropped positions
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_graph_output_keeps_its_name():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    model = g.build(g.node("MaxPool", [g.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, _ = ahead(model)
    assert order(optimized) == ["MaxPool", "Relu"]
    assert optimized.graph.node[-1].output[0] == model.graph.output[0].name


# --- Refusals -----------------------------------------------------------------------------


def test_bn_with_a_negative_scale_stops_the_pool():
    g = GraphBuilder()
    x = g.input("x", [1, 4, 8, 8])
    gamma = g.const("bn.scale", np.float32([1, -1, 2, 3]))
    bn = g.bn(x, 4, params=[gamma, *g.bn_params("stats", 4)[1:]])
    model = g.build(g.node("MaxPool", [g.node("Relu", [bn])], kernel_shape=[2, 2], strides=[2, 2]))
    optimized, report = ahead(model)
    assert order(optimized) == ["BatchNormalization", "MaxPool", "Relu"]  # past Relu, not BN
    assert any("non-positive scale" in r for r in report.refusals), report.refusals
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_leaky_relu_with_negative_alpha():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.node("LeakyRelu", [x], alpha=-0.5)
    refused(g.build(g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])), "not monotone")


def test_activation_with_another_reader():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.node("Relu", [x])
    pooled = g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    refused(g.build(pooled, g.node("Sigmoid", [y])), "also feeds")


def test_activation_output_is_a_graph_output():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.node("Relu", [x])
    refused(g.build(g.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2]), y), "graph output")


def test_used_indices():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    values, indices = g.node("MaxPool", [g.node("Relu", [x])], n_out=2, **STEM_POOL)
    refused(g.build(values, g.node("Cast", [indices], to=1)), "Indices")


def test_stride_one_pool_saves_nothing():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    pool = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    refused(g.build(g.node("MaxPool", [g.node("Relu", [x])], **pool)), "nothing to save")

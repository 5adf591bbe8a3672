"""IdentityPoolRemoval: pools that copy their input go.

Each test builds a 3-5 node graph, runs the pass, checks which pools are
left and that onnxruntime gives the same outputs before and after.
"""

import pytest
from builders import GraphBuilder, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.pool_identity import IdentityPoolRemoval

UNIT = {"kernel_shape": [1, 1], "strides": [1, 1]}


def remove(model, **kwargs):
    optimized, (report,) = optimize(model, IdentityPoolRemoval, **kwargs)
    feeds = random_feeds(model)
    for got, want in zip(run(optimized, feeds), run(model, feeds)):
        assert_fp32_close(got, want)
    return [n.op_type for n in optimized.graph.node], report


def relu_pool_relu(shape, op, **attrs):
    g = GraphBuilder()
    x = g.input("x", shape)
    return g.build(g.node("Relu", [g.node(op, [g.node("Relu", [x])], **attrs)]))


# --- Case 1: kernel 1, stride 1, no padding -----------------------------------------------


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
def test_unit_pool_is_removed(op):
    order, report = remove(relu_pool_relu([1, 3, 5, 5], op, **UNIT))
    assert order == ["Relu", "Relu"] and len(report.notes) == 1


def test_unit_pool_as_graph_output_hands_its_name_on():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    model = g.build(g.node("MaxPool", [g.node("Relu", [x])], kernel_shape=[1, 1]))
    optimized, _ = optimize(model, IdentityPoolRemoval)
    assert [n.op_type for n in optimized.graph.node] == ["Relu"]
    assert optimized.graph.node[0].output[0] == model.graph.output[0].name


@pytest.mark.parametrize(
    "attrs",
    [{**UNIT, "strides": [2, 2]}, {"kernel_shape": [2, 2]}],
    ids=["strided", "2x2"],
)
def test_pools_that_change_their_input_stay(attrs):
    order, _ = remove(relu_pool_relu([1, 3, 5, 5], "MaxPool", **attrs))
    assert order == ["Relu", "MaxPool", "Relu"]


def test_padded_unit_pool_stays():
    # onnxruntime refuses pads ≥ kernel, so this one is checked by structure only.
    model = relu_pool_relu([1, 3, 5, 5], "AveragePool", **UNIT, pads=[1, 1, 1, 1])
    optimized, _ = optimize(model, IdentityPoolRemoval)
    assert len(optimized.graph.node) == 3


def test_unit_pool_between_graph_input_and_output_is_kept():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    model = g.build(g.node("AveragePool", [x], **UNIT))
    order, report = remove(model)
    assert order == ["AveragePool"] and "cannot carry both names" in report.refusals[0]


def test_max_pool_with_used_indices_stays():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    values, indices = g.node("MaxPool", [g.node("Relu", [x])], n_out=2, **UNIT)
    order, _ = remove(g.build(values, g.node("Cast", [indices], to=1)))
    assert order == ["Relu", "MaxPool", "Cast"]


# --- Case 2: a global pool over a 1x1 map -------------------------------------------------


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool_of_a_1x1_map_is_removed(op):
    model = relu_pool_relu([1, 3, 1, 1], op)
    order, _ = remove(model, static_input_shapes={"x": [1, 3, 1, 1]})
    assert order == ["Relu", "Relu"]


def test_global_pool_at_open_sizes_stays():
    # 1x1 at the size MACs are counted at, but not at every size the model accepts.
    model = relu_pool_relu(["N", 3, "H", "W"], "GlobalAveragePool")
    order, _ = remove(model, static_input_shapes={"x": [1, 3, 1, 1]})
    assert order == ["Relu", "GlobalAveragePool", "Relu"]

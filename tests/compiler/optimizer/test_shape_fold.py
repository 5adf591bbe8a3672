"""ShapeFolding then ConstantFolding: shape chains from inferred shapes, open dims kept."""

import numpy as np
from builders import GraphBuilder, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.constant_fold import ConstantFolding
from netc.compiler.optimizer.passes.shape_fold import ShapeFolding

PASSES = (ShapeFolding, ConstantFolding, DeadNodeRemoval)


def assert_same_at(before, after, **sizes):
    feeds = random_feeds(before, **sizes)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def flatten_chain(g, x, index):
    """Reshape(x, [-1, Shape(x)[index]·…]): the Shape → Gather → Unsqueeze → Concat chain."""
    shape = g.node("Shape", [x])
    dim = g.node("Gather", [shape, g.const(g.fresh("i"), np.array(index, np.int64))], axis=0)
    dim = g.node("Unsqueeze", [dim, g.const(g.fresh("axes"), np.array([0], np.int64))])
    target = g.node("Concat", [g.const(g.fresh("rest"), np.array([-1], np.int64)), dim], axis=0)
    return g.node("Reshape", [x, target])


def test_a_static_dim_of_an_open_batch_folds_and_stays_correct_at_every_batch():
    # Case 2: Shape(x)[1] is 3 whatever N is; the whole chain becomes one constant.
    g = GraphBuilder(opset=17)
    x = g.input("x", ["N", 3, 4])
    model = g.build(flatten_chain(g, g.node("Relu", [x]), 1))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized) == {"Relu": 1, "Reshape": 1}
    assert any("of a shape → 3" in n for n in reports[0].notes)
    for n in (1, 5):
        assert_same_at(model, optimized, N=n)


def test_an_open_dim_stays_computed():
    # Shape(x)[0] is the batch: it must stay a Shape → Gather at run time.
    g = GraphBuilder(opset=17)
    x = g.input("x", ["N", 3, 4])
    model = g.build(flatten_chain(g, g.node("Relu", [x]), 0))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Shape"] == 1 and ops(optimized)["Gather"] == 1
    assert "dims [0] are open" in reports[0].refusals[0]
    for n in (1, 4):
        assert_same_at(model, optimized, N=n)


def test_shape_and_size_of_a_static_tensor_fold_whole():
    # Cases 1 and 3, with Shape-15's start.
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3, 4])
    y = g.node("Relu", [x])
    tail = g.node("Shape", [y], start=1)
    size = g.node("Cast", [g.node("Size", [y])], to=1)
    reshaped = g.node(
        "Reshape",
        [
            g.node("Neg", [x]),
            g.node("Concat", [g.const("two", np.array([2], np.int64)), tail], axis=0),
        ],
    )
    model = g.build(g.node("Mul", [reshaped, size]))
    optimized, reports = optimize(model, *PASSES)
    assert "Shape" not in ops(optimized) and "Size" not in ops(optimized)
    assert "Cast" not in ops(optimized)
    assert any(n.endswith("→ [3, 4]") for n in reports[0].notes)
    assert any(n.endswith("→ 24") for n in reports[0].notes)
    assert_same_at(model, optimized)

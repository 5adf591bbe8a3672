"""ConstantFolding: Constant nodes become initializers, nodes of constants their value."""

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from builders import GraphBuilder, initializer, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.constant_fold import ALWAYS_FOLD_BYTES, ConstantFolding


def assert_same(before, after):
    feeds = random_feeds(before)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def constant_node(g, name, array=None, **attrs):
    if array is not None:
        attrs = {"value": onnx.numpy_helper.from_array(np.asarray(array), name)}
    g.nodes.append(oh.make_node("Constant", [], [name], name=name, **attrs))
    return name


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"value_float": 2.5}, np.float32(2.5)),
        ({"value_floats": [1.0, -2.0, 3.0]}, np.array([1, -2, 3], np.float32)),
    ],
)
def test_constant_node_becomes_an_initializer_of_the_same_name(attrs, expected):
    # Case 1.
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    c = constant_node(g, "c", **attrs)
    model = g.build(g.node("Mul", [x, c]))
    optimized, _ = optimize(model, ConstantFolding)
    assert ops(optimized) == {"Mul": 1}
    np.testing.assert_array_equal(initializer(optimized, "c"), expected)
    assert_same(model, optimized)


def test_a_chain_of_constants_folds_into_one_initializer():
    # Case 2: Unsqueeze(Constant) → Concat → Reshape target, as TorchScript exports carry.
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 12])
    axes = g.const("axes", np.array([0], np.int64))
    parts = [
        g.node("Unsqueeze", [constant_node(g, f"d{i}", np.array(d, np.int64)), axes])
        for i, d in enumerate((2, 3, 4))
    ]
    shape = g.node("Concat", parts, axis=0)
    model = g.build(g.node("Reshape", [x, shape]))
    optimized, reports = optimize(model, ConstantFolding, DeadNodeRemoval)
    assert ops(optimized) == {"Reshape": 1}
    target = optimized.graph.node[0].input[1]
    np.testing.assert_array_equal(initializer(optimized, target), [2, 3, 4])
    assert len(reports[0].notes) == 5  # three Unsqueeze, the Concat, and the lifts
    assert reports[0].notes[-1] == "3 Constant nodes → initializers"
    assert_same(model, optimized)


def test_reshape_of_a_weight_feeding_matmul_folds_into_the_weight():
    # Case 2 (issue 18's small fold): the weight is stored already reshaped.
    g = GraphBuilder()
    x = g.input("x", [2, 6])
    w = g.param("w", [3, 8])
    flat = g.node("Reshape", [w, g.const("s", np.array([6, 4], np.int64))])
    model = g.build(g.node("MatMul", [x, flat]))
    optimized, _ = optimize(model, ConstantFolding, DeadNodeRemoval)
    assert ops(optimized) == {"MatMul": 1}
    assert [list(t.dims) for t in optimized.graph.initializer] == [[6, 4]]
    assert_same(model, optimized)


def test_a_result_larger_than_what_it_frees_is_not_folded():
    # Tile of a small constant into a big one would inflate the file.
    g = GraphBuilder()
    x = g.input("x", [64, 64])
    small = g.param("small", [1, 64])
    big = g.node("Tile", [small, g.const("reps", np.array([64, 1], np.int64))])
    model = g.build(g.node("Add", [x, big]))
    assert 64 * 64 * 4 > ALWAYS_FOLD_BYTES
    optimized, reports = optimize(model, ConstantFolding)
    assert ops(optimized) == {"Tile": 1, "Add": 1}
    assert "would make the file bigger" in reports[0].refusals[0]


def test_initializers_that_are_graph_inputs_are_not_constants():
    # IR 3 layout: the caller may feed 'w', so Neg(w) must stay computed.
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    w = g.param("w", [2, 3])
    g.input("w", [2, 3])
    model = g.build(g.node("Add", [x, g.node("Neg", [w])]), ir_version=3)
    optimized, _ = optimize(model, ConstantFolding)
    assert ops(optimized) == {"Neg": 1, "Add": 1}


@pytest.mark.parametrize("case", ["random", "graph output"])
def test_nodes_that_must_stay_computed_are_refused(case):
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    if case == "random":
        noise = g.node("RandomNormalLike", [g.param("w", [2, 3])])
        model = g.build(g.node("Add", [x, noise]))
        optimized, _ = optimize(model, ConstantFolding)
        assert ops(optimized)["RandomNormalLike"] == 1
    else:
        neg = g.node("Neg", [g.param("w", [2, 3])])
        model = g.build(g.node("Add", [x, neg]), neg)
        optimized, reports = optimize(model, ConstantFolding)
        assert ops(optimized)["Neg"] == 1
        assert "is a graph output" in reports[0].refusals[0]
        assert_same(model, optimized)


def test_a_huge_constant_of_shape_is_refused_before_it_is_computed():
    # 10¹² floats: evaluating first would fill the memory; the inferred size refuses it.
    g = GraphBuilder(opset=17)
    x = g.input("x", [1])
    huge = g.node("ConstantOfShape", [g.const("shape", np.array([10**6, 10**6], np.int64))])
    model = g.build(g.node("Add", [x, g.node("ReduceSum", [huge], keepdims=0)]))
    optimized, reports = optimize(model, ConstantFolding)
    assert ops(optimized)["ConstantOfShape"] == 1
    assert "4,000,000,000,000 bytes" in reports[0].refusals[0]


def test_large_constants_fold_only_on_request_and_then_bn_folds_too():
    # The onnx package's "light" models compute every weight with ConstantOfShape.
    g = GraphBuilder(opset=17)
    x = g.input("x", [1, 16, 6, 6])
    shape = g.const("shape", np.array([16, 16, 3, 3], np.int64))  # 9,216 bytes
    fill = onnx.numpy_helper.from_array(np.array([0.01], np.float32))
    weight = g.node("ConstantOfShape", [shape], value=fill)
    model = g.build(g.bn(g.node("Conv", [x, weight], pads=[1, 1, 1, 1]), 16))
    default, reports = optimize(model)
    assert ops(default)["BatchNormalization"] == 1
    assert any("make the file bigger" in r for rep in reports for r in rep.refusals)
    folded, _ = optimize(model, enable={"fold_large_constants"})
    assert ops(folded) == {"Conv": 1}
    assert_same(model, folded)


def test_a_node_with_a_subgraph_is_not_evaluated():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2])
    branches = {}
    for name, number in (("then_branch", 1.0), ("else_branch", 2.0)):
        out = f"{name}_out"
        body = oh.make_graph(
            [oh.make_node("Constant", [], [out], value_floats=[number, number])],
            name,
            [],
            [oh.make_tensor_value_info(out, onnx.TensorProto.FLOAT, [2])],
        )
        branches[name] = body
    chosen = g.node("If", [g.const("cond", np.array(True))], **branches)
    model = g.build(g.node("Add", [x, chosen]))
    optimized, reports = optimize(model, ConstantFolding)
    assert ops(optimized) == {"If": 1, "Add": 1}
    assert "it has a subgraph" in reports[0].refusals[0]
    assert_same(model, optimized)


def test_a_quantized_weight_stays_quantized():
    # DequantizeLinear(int8 W) → Conv is what runtimes run as an int8 conv.
    g = GraphBuilder(opset=17)
    x = g.input("x", [1, 2, 4, 4])
    w = g.const("w", np.arange(-8, 10, dtype=np.int8).reshape(2, 1, 3, 3))
    dq = g.node(
        "DequantizeLinear", [w, g.const("scale", np.float32(0.1)), g.const("zero", np.int8(0))]
    )
    model = g.build(g.node("Conv", [x, dq], group=2))
    optimized, _ = optimize(model, ConstantFolding)
    assert ops(optimized) == {"DequantizeLinear": 1, "Conv": 1}

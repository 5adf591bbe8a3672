"""RedundancyElimination (no-op nodes, shape-op chains) and CommonSubexpressionElimination."""

import numpy as np
import pytest
from builders import GraphBuilder, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.cse import CommonSubexpressionElimination
from netc.compiler.optimizer.passes.redundancy import RedundancyElimination

PASSES = (RedundancyElimination, DeadNodeRemoval)


def assert_same(before, after, **sizes):
    feeds = random_feeds(before, **sizes)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def i64(g, values):
    return g.const(g.fresh("c"), np.array(values, np.int64))


@pytest.mark.parametrize(
    "make",
    [
        lambda g, x: g.node("Reshape", [x, i64(g, [2, 3, 4])]),  # case 1
        lambda g, x: g.node("Expand", [x, i64(g, [1, 3, 1])]),
        lambda g, x: g.node("Slice", [x, i64(g, [0]), i64(g, [9]), i64(g, [1])]),  # case 2
        lambda g, x: g.node("Pad", [x, i64(g, [0] * 6)]),  # case 3
        lambda g, x: g.node("Transpose", [x], perm=[0, 1, 2]),
        lambda g, x: g.node("Cast", [x], to=1),
        lambda g, x: g.node("Concat", [x], axis=1),
        lambda g, x: g.node("Mul", [x, g.const("one", np.ones((3, 1), np.float32))]),  # case 4
        lambda g, x: g.node("Sub", [x, g.const("zero", np.zeros(4, np.float32))]),
    ],
    ids=["reshape", "expand", "slice", "pad", "transpose", "cast", "concat", "mul", "sub"],
)
def test_a_node_computing_its_input_is_removed(make):
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3, 4])
    model = g.build(g.node("Relu", [make(g, g.node("Neg", [x]))]))
    optimized, reports = optimize(model, *PASSES)
    assert set(ops(optimized)) == {"Neg", "Relu"}
    assert reports[0].notes
    assert_same(model, optimized)


@pytest.mark.parametrize(
    "make",
    [
        # a full-length reversal keeps the shape but not the order
        lambda g, x: g.node("Slice", [x, i64(g, [-1]), i64(g, [-10]), i64(g, [2]), i64(g, [-1])]),
        lambda g, x: g.node("Expand", [x, i64(g, [2, 2, 3, 4])]),  # a larger shape
        lambda g, x: g.node("Mul", [x, g.const("one", np.ones((2, 2, 3, 4), np.float32))]),
        lambda g, x: g.node("Mul", [x, g.const("two", np.full(4, 2, np.float32))]),
    ],
    ids=["reversing slice", "expand", "broadcasting mul", "mul by 2"],
)
def test_a_node_that_changes_its_input_is_kept(make):
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3, 4])
    model = g.build(make(g, g.node("Neg", [x])))
    optimized, _ = optimize(model, *PASSES)
    assert len(optimized.graph.node) == 2
    assert_same(model, optimized)


def test_flatten_of_a_matrix_is_removed():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 12])
    model = g.build(g.node("Relu", [g.node("Flatten", [g.node("Neg", [x])], axis=1)]))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized) == {"Neg": 1, "Relu": 1}
    assert_same(model, optimized)


def test_reshape_chain_keeps_only_the_last_target():
    # Case 5, with an open batch: only the last target (-1, 12) counts.
    g = GraphBuilder(opset=17)
    x = g.input("x", ["N", 3, 4])
    first = g.node("Reshape", [g.node("Neg", [x]), i64(g, [-1, 4, 3])])
    model = g.build(g.node("Reshape", [first, i64(g, [-1, 12])]))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized) == {"Neg": 1, "Reshape": 1}
    for n in (1, 3):
        assert_same(model, optimized, N=n)


def test_reshape_chain_with_a_copied_dim_is_refused():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3, 4])
    first = g.node("Reshape", [g.node("Neg", [x]), i64(g, [4, 3, 2])])
    model = g.build(g.node("Reshape", [first, i64(g, [0, -1])]))
    optimized, reports = optimize(model, *PASSES)
    assert ops(optimized)["Reshape"] == 2
    assert "copies a dim" in reports[0].refusals[0]
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("p", "q", "left"),
    [([0, 2, 3, 1], [0, 3, 1, 2], 0), ([0, 2, 3, 1], [1, 0, 2, 3], 1), (None, None, 0)],
)
def test_transpose_pairs_cancel_or_compose(p, q, left):
    # Case 6: NCHW → NHWC → NCHW cancels; other pairs become one Transpose.
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3, 4, 5])
    attrs_p = {} if p is None else {"perm": p}
    attrs_q = {} if q is None else {"perm": q}
    first = g.node("Transpose", [g.node("Neg", [x])], **attrs_p)
    model = g.build(g.node("Relu", [g.node("Transpose", [first], **attrs_q)]))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized).get("Transpose", 0) == left
    assert_same(model, optimized)


@pytest.mark.parametrize(("first", "second"), [("Squeeze", "Unsqueeze"), ("Unsqueeze", "Squeeze")])
def test_squeeze_unsqueeze_pairs_on_the_same_axes_cancel(first, second):
    # Case 7, with a negative axis on one side.
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 1, 4])
    inner_axes, outer_axes = ([1], [-2]) if first == "Squeeze" else ([-1], [3])
    y = g.node(first, [g.node("Neg", [x]), i64(g, inner_axes)])
    model = g.build(g.node("Relu", [g.node(second, [y, i64(g, outer_axes)])]))
    optimized, _ = optimize(model, *PASSES)
    assert set(ops(optimized)) == {"Neg", "Relu"}
    assert_same(model, optimized)


def test_squeeze_unsqueeze_on_other_axes_is_kept():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 1, 4])
    y = g.node("Squeeze", [g.node("Neg", [x]), i64(g, [1])])
    model = g.build(g.node("Unsqueeze", [y, i64(g, [0])]))
    optimized, _ = optimize(model, *PASSES)
    assert ops(optimized) == {"Neg": 1, "Squeeze": 1, "Unsqueeze": 1}
    assert_same(model, optimized)


def test_identical_nodes_on_identical_inputs_are_computed_once():
    # CSE case 1, twice in a row: the second merge is made possible by the first.
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3])
    a, b = g.node("Relu", [x]), g.node("Relu", [x])
    model = g.build(g.node("Add", [g.node("Neg", [a]), g.node("Neg", [b])]))
    optimized, reports = optimize(model, CommonSubexpressionElimination)
    assert ops(optimized) == {"Relu": 1, "Neg": 1, "Add": 1}
    assert len(reports[0].notes) == 2
    assert_same(model, optimized)


def test_cse_keeps_nodes_that_differ_or_draw_random_numbers():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3])
    soft = [g.node("Softmax", [x], axis=axis) for axis in (0, 1)]
    noise = [g.node("RandomUniformLike", [x], seed=1.0) for _ in range(2)]
    model = g.build(g.node("Add", soft), g.node("Add", noise))
    optimized, _ = optimize(model, CommonSubexpressionElimination)
    assert ops(optimized) == {"Softmax": 2, "RandomUniformLike": 2, "Add": 2}


def test_cse_between_two_graph_outputs_is_refused():
    g = GraphBuilder(opset=17)
    x = g.input("x", [2, 3])
    model = g.build(g.node("Relu", [x]), g.node("Relu", [x]))
    optimized, reports = optimize(model, CommonSubexpressionElimination)
    assert ops(optimized) == {"Relu": 2}
    assert "one value cannot carry both names" in reports[0].refusals[0]


@pytest.mark.parametrize(("end", "removed"), [(4, True), (2**62, True), (-1, False), (3, False)])
def test_a_slice_taking_a_fixed_axis_whole_goes_though_other_dims_are_open(end, removed):
    # Case 2: GhostNet's torch.cat([a, b], 1)[:, :C] with open batch, H and W.
    g = GraphBuilder(opset=17)
    x = g.input("x", ["N", 4, "H", "W"])
    sliced = g.node("Slice", [g.node("Neg", [x]), i64(g, [0]), i64(g, [end]), i64(g, [1])])
    model = g.build(g.node("Relu", [sliced]))
    optimized, _ = optimize(model, *PASSES)
    assert ("Slice" not in ops(optimized)) == removed
    for n in (1, 3):
        assert_same(model, optimized, N=n, H=5, W=2 + n)


def test_cse_compares_string_tensor_attributes():
    # LabelEncoder's keys_tensor is a string tensor (it has no raw bytes to compare).
    import onnx
    import onnx.helper as oh

    keys = oh.make_tensor("keys", onnx.TensorProto.STRING, [2], [b"a", b"b"])
    values = oh.make_tensor("values", onnx.TensorProto.INT64, [2], [1, 2])
    nodes = [
        oh.make_node(
            "LabelEncoder",
            ["x"],
            [y],
            domain="ai.onnx.ml",
            keys_tensor=keys,
            values_tensor=values,
            default_tensor=oh.make_tensor("d", 7, [1], [0]),
        )
        for y in ("y1", "y2")
    ]
    nodes.append(oh.make_node("Add", ["y1", "y2"], ["z"]))
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.STRING, [3])],
        [oh.make_tensor_value_info("z", onnx.TensorProto.INT64, [3])],
    )
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("ai.onnx.ml", 4)]
    )
    model.ir_version = 8
    optimized, _ = optimize(model, CommonSubexpressionElimination)
    assert ops(optimized) == {"LabelEncoder": 1, "Add": 1}


def test_cse_merges_nodes_whose_constants_are_equal_and_keeps_those_that_differ():
    # Two convs with equal weights on one input are one conv; a third with other
    # weights stays.
    g = GraphBuilder(opset=17)
    x = g.input("x", [1, 3, 5, 5])
    w = np.ones((4, 3, 1, 1), np.float32)
    convs = [g.node("Conv", [x, g.const(f"w{i}", w * (1 if i < 2 else 2))]) for i in range(3)]
    model = g.build(g.node("Sum", convs))
    optimized, _ = optimize(model, CommonSubexpressionElimination)
    assert ops(optimized) == {"Conv": 2, "Sum": 1}
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("pieces", "removed"),
    [
        (["dim0", [-1]], True),  # x.view(x.size(0), -1)
        (["dim0", [6]], True),
        ([[0], "dim1"], True),  # 0 copies dim 0
        (["dim0", [3, 2]], False),  # a different shape
        (["dim1", [-1]], False),  # dim 1 where dim 0 belongs
    ],
)
def test_a_reshape_to_its_own_open_shape_is_removed(pieces, removed):
    # Case 1 with a target computed from the input's own dims.
    g = GraphBuilder(opset=17)
    x = g.input("x", ["N", 6])
    y = g.node("Neg", [x])
    shape = g.node("Shape", [y])
    parts = []
    for piece in pieces:
        if isinstance(piece, str):
            index = g.const(g.fresh("i"), np.array(int(piece[-1]), np.int64))
            dim = g.node("Gather", [shape, index], axis=0)
            parts.append(g.node("Unsqueeze", [dim, i64(g, [0])]))
        else:
            parts.append(i64(g, piece))
    model = g.build(g.node("Reshape", [y, g.node("Concat", parts, axis=0)]))
    optimized, _ = optimize(model, *PASSES)
    assert ("Reshape" not in ops(optimized)) == removed
    if removed:
        assert ops(optimized) == {"Neg": 1}
    for n in (1, 6):
        assert_same(model, optimized, N=n)

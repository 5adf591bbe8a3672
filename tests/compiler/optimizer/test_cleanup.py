"""Clean-up passes: Identity and Dropout removal, dead nodes, unused and duplicate initializers."""

import numpy as np
import pytest
from builders import GraphBuilder, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.cleanup import (
    DeadNodeRemoval,
    DropoutRemoval,
    DuplicateInitializerRemoval,
    IdentityElimination,
)


def assert_same(before, after):
    feeds = random_feeds(before)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def output_names(model):
    return [o.name for o in model.graph.output]


# --- IdentityElimination ------------------------------------------------------------------


def test_identity_inside_the_graph_is_bypassed():
    # Case 1.
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    model = g.build(
        g.node("Relu", [g.node("Identity", [g.node("Identity", [g.node("Neg", [x])])])])
    )
    optimized, reports = optimize(model, IdentityElimination)
    assert ops(optimized) == {"Neg": 1, "Relu": 1}
    assert len(reports[0].notes) == 2
    assert_same(model, optimized)


def test_identity_producing_a_graph_output_hands_its_name_over():
    # Case 2.
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    model = g.build(g.node("Identity", [g.node("Neg", [x])], name="y"))
    optimized, _ = optimize(model, IdentityElimination)
    assert ops(optimized) == {"Neg": 1} and output_names(optimized) == ["y"]
    assert_same(model, optimized)


@pytest.mark.parametrize("source", ["graph input", "initializer", "graph output"])
def test_identity_between_two_named_values_is_kept(source):
    # Case 3, including an x that is itself a graph output (onnx_ir's own pass renames it
    # away and leaves two outputs called 'y').
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    outputs = []
    if source == "graph input":
        src = x
    elif source == "initializer":
        src = g.param("w", [2, 3])
        outputs.append(g.node("Neg", [x]))
    else:
        src = g.node("Neg", [x])
        outputs.append(src)
    model = g.build(*outputs, g.node("Identity", [src], name="y"))
    optimized, reports = optimize(model, IdentityElimination)
    assert ops(optimized)["Identity"] == 1
    assert output_names(optimized) == output_names(model)
    assert "one value cannot carry both names" in reports[0].refusals[0]
    assert_same(model, optimized)


# --- DropoutRemoval -----------------------------------------------------------------------


@pytest.mark.parametrize("opset", [7, 10, 12, 13])
def test_inference_dropout_is_removed(opset):
    # Cases 1 and 2 (an unused mask output is fine).
    g = GraphBuilder(opset=opset)
    x = g.input("x", [2, 3])
    drop = g.node("Dropout", [g.node("Neg", [x])], n_out=2)[0]
    model = g.build(g.node("Relu", [drop]))
    optimized, reports = optimize(model, DropoutRemoval)
    assert ops(optimized) == {"Neg": 1, "Relu": 1}
    assert reports[0].notes
    assert_same(model, optimized)


def test_dropout_with_constant_false_training_mode_is_removed():
    g = GraphBuilder(opset=13)
    x = g.input("x", [2, 3])
    ratio, mode = g.const("ratio", np.array(0.5, np.float32)), g.const("mode", np.array(False))
    model = g.build(g.node("Relu", [g.node("Dropout", [x, ratio, mode])]))
    optimized, _ = optimize(model, DropoutRemoval)
    assert "Dropout" not in ops(optimized)
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("training", "training mode (training_mode=true)"),
        ("mode input", "training_mode input is not a constant"),
        ("mask used", "mask output"),
    ],
)
def test_dropout_that_is_not_an_identity_is_kept(case, reason):
    g = GraphBuilder(opset=13)
    x = g.input("x", [2, 3])
    if case == "training":
        ratio = g.const("ratio", np.array(0.5, np.float32))
        inputs = [x, ratio, g.const("mode", np.array(True))]
    elif case == "mode input":
        inputs = [x, "", g.input("mode", [], dtype=np.bool_)]
    else:
        inputs = [x]
    y, mask = g.node("Dropout", inputs, n_out=2)
    outputs = [g.node("Relu", [y])]
    if case == "mask used":
        outputs.append(g.node("Cast", [mask], to=1))
    model = g.build(*outputs)
    optimized, reports = optimize(model, DropoutRemoval)
    assert ops(optimized)["Dropout"] == 1
    assert reason in reports[0].refusals[0]


# --- DeadNodeRemoval ----------------------------------------------------------------------


def test_dead_nodes_and_unused_initializers_go_graph_inputs_stay():
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    g.input("unused_input", [1])
    g.param("unused", [3])
    g.node("Exp", [g.node("Neg", [x], name="dead1")], name="dead2")
    model = g.build(g.node("Relu", [x]))
    optimized, reports = optimize(model, DeadNodeRemoval)
    assert ops(optimized) == {"Relu": 1}
    assert [i.name for i in optimized.graph.input] == ["x", "unused_input"]
    assert not optimized.graph.initializer
    assert sorted(reports[0].notes) == [
        "Exp dead2 removed",
        "Neg dead1 removed",
        "initializer 'unused' removed",
    ]
    assert_same(model, optimized)


# --- DuplicateInitializerRemoval ----------------------------------------------------------


def test_identical_initializers_are_merged_others_kept():
    g = GraphBuilder()
    x = g.input("x", [2, 3])
    data = np.arange(3, dtype=np.float32)
    y = g.node("Add", [x, g.const("a", data)])
    y = g.node("Mul", [y, g.const("b", data.copy())])  # same dtype, shape, bytes: merged
    y = g.node("Sub", [y, g.const("c", data.reshape(1, 3))])  # another shape: kept
    y = g.node("Add", [y, g.const("d", data + 1)])  # other bytes: kept
    g.node("Cast", [g.const("e", data.view(np.int32))], to=1)  # same bytes, other dtype: kept
    model = g.build(y)
    optimized, reports = optimize(model, DuplicateInitializerRemoval)
    assert sorted(t.name for t in optimized.graph.initializer) == ["a", "c", "d", "e"]
    assert reports[0].notes == ["'b' merged into 'a'"]
    assert_same(model, optimized)

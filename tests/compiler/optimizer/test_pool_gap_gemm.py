"""GapGemmToConv: GlobalAveragePool → Flatten → Gemm becomes Conv1x1 → GlobalAveragePool → Flatten.

Each test builds a 3-5 node graph, runs the pass (its flag enabled), checks
the op order and that onnxruntime gives the same outputs before and after
on random inputs; each refusal keeps the head and says why.
"""

import numpy as np
import pytest
from builders import GraphBuilder, initializer, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.pool_gap_gemm import GapGemmToConv
from netc.compiler.optimizer.pipeline import selected

CLASSES, FEATURES = 5, 6


def head(shape, *, trans_b=1, bias=(CLASSES,), weight_input=False, **gemm):
    """x → Relu → GlobalAveragePool → Flatten → Gemm."""
    g = GraphBuilder()
    x = g.input("x", shape)
    pooled = g.node("GlobalAveragePool", [g.node("Relu", [x])])
    flat = g.node("Flatten", [pooled], axis=gemm.pop("axis", 1))
    w_shape = [CLASSES, FEATURES] if trans_b else [FEATURES, CLASSES]
    w = g.input("w", w_shape) if weight_input else g.param("fc.weight", w_shape)
    inputs = [flat, w] + ([g.param("fc.bias", list(bias))] if bias is not None else [])
    return g.build(g.node("Gemm", inputs, transB=trans_b, **gemm))


def convert(model, size=4):
    """Run the pass (flag enabled), counting MACs with open dims at `size`; (optimized, report)."""
    dims = [d.dim_value or size for d in model.graph.input[0].type.tensor_type.shape.dim]
    optimized, (report,) = optimize(
        model, GapGemmToConv, enable={"fully_convolutional"}, static_input_shapes={"x": dims}
    )
    return optimized, report


def order(model) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_runs_only_when_its_flag_is_enabled():
    assert GapGemmToConv not in selected()
    assert GapGemmToConv in selected({"fully_convolutional"})


@pytest.mark.parametrize(
    ("trans_b", "bias", "gemm"),
    [
        (1, (CLASSES,), {}),
        (0, (1, CLASSES), {"alpha": 0.5, "beta": 2.0}),
        (1, (1,), {"beta": -1.0}),
        (0, None, {"alpha": 3.0}),
    ],
    ids=["torch-linear", "transB0-row-bias-scaled", "scalar-bias", "no-bias"],
)
def test_head_becomes_conv_then_pool(trans_b, bias, gemm):
    model = head([1, FEATURES, 4, 3], trans_b=trans_b, bias=bias, **gemm)
    optimized, report = convert(model)
    assert order(optimized) == ["Relu", "Conv", "GlobalAveragePool", "Flatten"]
    assert optimized.graph.output[0].name == model.graph.output[0].name
    assert report.macs_saved == -CLASSES * FEATURES * (4 * 3 - 1)  # it costs, per position
    feeds = random_feeds(model)
    assert_fp32_close(run(optimized, feeds)[0], run(model, feeds)[0])


def test_open_sizes():
    model = head(["N", FEATURES, "H", "W"])
    optimized, report = convert(model, size=3)
    assert order(optimized)[1] == "Conv"
    assert report.macs_saved == -CLASSES * FEATURES * (3 * 3 - 1)  # counted at 3x3
    feeds = random_feeds(model, N=2, H=7, W=5)
    assert_fp32_close(run(optimized, feeds)[0], run(model, feeds)[0])


# --- Refusals -----------------------------------------------------------------------------


def refused(model, reason: str):
    optimized, report = convert(model)
    assert order(optimized) == order(model)
    assert any(reason in r for r in report.refusals), report.refusals


def test_weight_that_is_not_a_constant():
    refused(head([1, FEATURES, 4, 3], weight_input=True), "not a constant")


def test_bias_per_batch_row():
    refused(head([2, FEATURES, 4, 3], bias=(2, CLASSES)), "one value per output")


def test_transposed_input():
    g = GraphBuilder()
    x = g.input("x", [1, FEATURES, 4, 3])
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    w = g.param("w", [1, CLASSES])
    refused(g.build(g.node("Gemm", [flat, w], transA=1)), "transA=1")


def test_pooled_features_with_another_reader():
    g = GraphBuilder()
    x = g.input("x", [1, FEATURES, 4, 3])
    pooled = g.node("GlobalAveragePool", [x])
    flat = g.node("Flatten", [pooled])
    logits = g.node("Gemm", [flat, g.param("w", [CLASSES, FEATURES])], transB=1)
    refused(g.build(logits, g.node("Relu", [pooled])), "also feeds")


def test_flattened_features_are_a_graph_output():
    g = GraphBuilder()
    x = g.input("x", [1, FEATURES, 4, 3])
    flat = g.node("Flatten", [g.node("GlobalAveragePool", [x])])
    logits = g.node("Gemm", [flat, g.param("w", [CLASSES, FEATURES])], transB=1)
    refused(g.build(logits, flat), "graph output")


def test_conv_weight_is_the_fc_weight_as_1x1_filters():
    model = head([1, FEATURES, 2, 2])
    optimized, _ = convert(model)
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv")
    weight = initializer(optimized, conv.input[1])
    assert weight.shape == (CLASSES, FEATURES, 1, 1)
    np.testing.assert_array_equal(weight[:, :, 0, 0], initializer(model, "fc.weight"))

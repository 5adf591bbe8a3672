"""PoolMerge: pool₂(pool₁(x)) becomes one pool of the same kind.

Each test builds a 3-5 node graph, runs the pass, checks the merged
window and that onnxruntime gives the same outputs before and after on
random inputs; each refusal keeps both pools and says why.
"""

import pytest
from builders import GraphBuilder, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.pool_merge import PoolMerge


def pools(shape, op, first, second, *, extra_reader=False, expose=False):
    """x → Relu → op(first) → op(second); pool attributes as dicts."""
    g = GraphBuilder()
    x = g.input("x", shape)
    middle = g.node(op, [g.node("Relu", [x])], **first)
    out = g.node(op, [middle], **second)
    outputs = [out]
    if extra_reader:
        outputs.append(g.node("Sigmoid", [middle]))
    if expose:
        outputs.append(middle)
    return g.build(*outputs)


def window(k, s=None, **attrs):
    return {"kernel_shape": [k, k], "strides": [s or k, s or k], **attrs}


def attrs_of(node) -> dict:
    return {a.name: list(a.ints) if a.ints else a.i for a in node.attribute}


def merge(model):
    """Run the pass, at the declared input size when it is static; (optimized, report)."""
    shape = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    static = {"x": shape} if all(isinstance(d, int) for d in shape) else None
    optimized, (report,) = optimize(model, PoolMerge, static_input_shapes=static)
    return optimized, report


def merged(model):
    optimized, report = merge(model)
    pooling = [n for n in optimized.graph.node if n.op_type.endswith("Pool")]
    assert len(pooling) == 1, report.refusals
    feeds = random_feeds(model)
    for got, want in zip(run(optimized, feeds), run(model, feeds)):
        assert_fp32_close(got, want)
    return attrs_of(pooling[0])


def refused(model, reason: str):
    optimized, report = merge(model)
    assert [n.op_type for n in optimized.graph.node] == [n.op_type for n in model.graph.node]
    assert any(reason in r for r in report.refusals), report.refusals


# --- Case 1: non-overlapping average pools ------------------------------------------------


@pytest.mark.parametrize("size", [8, 10, 11], ids=["divisible", "floor-drops-2", "floor-drops-3"])
def test_average_pools_merge_into_the_product_kernel(size):
    attrs = merged(pools([1, 3, size, size], "AveragePool", window(2), window(2)))
    assert attrs["kernel_shape"] == [4, 4] and attrs["strides"] == [4, 4]


def test_ceil_mode_with_full_windows_merges():
    model = pools([1, 3, 12, 12], "AveragePool", window(2, ceil_mode=1), window(3, ceil_mode=1))
    attrs = merged(model)
    assert attrs["kernel_shape"] == [6, 6] and attrs["ceil_mode"] == 0


# --- Case 2: max pools whose first windows leave no gaps ----------------------------------


def test_max_pools_merge():
    attrs = merged(pools([1, 3, 10, 10], "MaxPool", window(2), window(2)))
    assert attrs["kernel_shape"] == [4, 4] and attrs["strides"] == [4, 4]


def test_overlapping_max_pools_merge():
    # 2x2/1 then 2x2/2: output i covers [2i, 2i+3), one 3x3/2 window.
    attrs = merged(pools([1, 3, 9, 9], "MaxPool", window(2, 1), window(2)))
    assert attrs["kernel_shape"] == [3, 3] and attrs["strides"] == [2, 2]


def test_chain_of_three_merges_into_one():
    g = GraphBuilder()
    x = g.input("x", [1, 2, 16, 16])
    y = g.node("AveragePool", [x], **window(2))
    y = g.node("AveragePool", [y], **window(2))
    model = g.build(g.node("AveragePool", [y], **window(2)))
    optimized, _ = merge(model)
    assert [n.op_type for n in optimized.graph.node] == ["AveragePool"]
    assert attrs_of(optimized.graph.node[0])["kernel_shape"] == [8, 8]
    assert optimized.graph.output[0].name == model.graph.output[0].name
    feeds = random_feeds(model)
    assert_fp32_close(run(optimized, feeds)[0], run(model, feeds)[0])


# --- Refusals -----------------------------------------------------------------------------


def test_padding():
    model = pools([1, 3, 8, 8], "MaxPool", window(2, pads=[1, 1, 1, 1]), window(2))
    refused(model, "pads")


def test_partial_ceil_window():
    # 10 → 5 → 3 with a partial last window; one 4x4/4 pool would give 2.
    model = pools([1, 3, 10, 10], "AveragePool", window(2), window(2, ceil_mode=1))
    refused(model, "partial window")


def test_ceil_mode_at_open_sizes():
    model = pools(["N", 3, "H", "W"], "AveragePool", window(2, ceil_mode=1), window(2))
    refused(model, "unknown input size")


def test_overlapping_average_pools():
    refused(pools([1, 3, 9, 9], "AveragePool", window(3, 2), window(2)), "overlapping")


def test_max_pool_windows_with_gaps():
    refused(pools([1, 3, 9, 9], "MaxPool", window(1, 2), window(2)), "gaps")


def test_merged_window_that_reads_more():
    refused(pools([1, 3, 9, 9], "MaxPool", window(3, 1), window(3, 1)), "reads 25")


def test_first_pool_with_another_reader():
    refused(pools([1, 3, 8, 8], "MaxPool", window(2), window(2), extra_reader=True), "also feeds")


def test_first_pool_output_is_a_graph_output():
    refused(pools([1, 3, 8, 8], "MaxPool", window(2), window(2), expose=True), "graph output")

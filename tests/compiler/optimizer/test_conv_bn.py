"""Conv-BN fusion: every case of the pass docstring, every pitfall in REFERENCE.md, every refusal.

Each test builds a 3-5 node graph, runs the pass, checks the structure
changed as claimed and that onnxruntime gives the same outputs before and
after on random inputs.
"""

import numpy as np
import onnx.helper as oh
import pytest
from builders import GraphBuilder, initializer, ops, optimize, random_feeds, run
from helpers import assert_fp32_close
from hypothesis import given, settings
from hypothesis import strategies as st

from netc.compiler.optimizer.passes.cleanup import DeadNodeRemoval
from netc.compiler.optimizer.passes.conv_bn import ConvBatchNormFusion

FUSE = (ConvBatchNormFusion, DeadNodeRemoval)


def fuse(model, **kwargs):
    """Run the fusion (and dead-code removal); (optimized model, the fusion's report)."""
    optimized, reports = optimize(model, *FUSE, **kwargs)
    return optimized, reports[0]


def assert_same(before, after, *, rtol, atol, seed=1, **sizes):
    feeds = random_feeds(before, seed=seed, **sizes)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want, rtol=rtol, atol=atol)


def assert_refused(model, reason: str):
    """The BN stays, the model computes the same, and the refusal says why."""
    optimized, report = fuse(model)
    assert ops(optimized)["BatchNormalization"] == ops(model)["BatchNormalization"]
    assert report.refusals and any(reason in r for r in report.refusals), report.refusals
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)
    return report


# --- Case 1: Conv -------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2, 8], ids=["dense", "grouped", "depthwise"])
def test_conv_bn_folds_into_the_conv(bias, group):
    g = GraphBuilder()
    x = g.input("x", ["N", 8, "H", "W"])
    model = g.build(g.bn(g.conv(x, 8, 8, group=group, bias=bias), 8))
    optimized, report = fuse(model)
    assert ops(optimized) == {"Conv": 1}
    assert len(optimized.graph.node[0].input) == 3  # a bias is added when there was none
    assert report.nodes_before - report.nodes_after == 1 and len(report.notes) == 1
    assert_same(model, optimized, rtol=1e-4, atol=1e-5, N=2, H=9, W=7)


def test_conv_bias_goes_through_the_mean_not_around_it():
    # Pitfall 4: b' = (b − μ)·γ/σ + β. With μ = b the conv output's mean is removed exactly.
    g = GraphBuilder()
    x = g.input("x", [1, 2, 5, 5])
    c = g.conv(x, 2, 2, name="conv")
    bias = initializer(g.build(c), "conv.bias")
    params = [
        g.const("s", np.array([2.0, 3.0], np.float32)),
        g.const("b", np.array([0.5, -1.0], np.float32)),
        g.const("m", bias),
        g.const("v", np.array([4.0, 9.0], np.float32)),
    ]
    model = g.build(g.bn(c, 2, params=params, epsilon=0.0))
    optimized, _ = fuse(model)
    np.testing.assert_allclose(initializer(optimized, "conv.bias"), [0.5, -1.0], rtol=1e-6)
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("epsilon", [1e-3, 0.1])
def test_non_default_epsilon(epsilon):
    # Pitfall 8: GoogLeNet and Keras use 1e-3. Small variances make ε matter.
    g = GraphBuilder()
    x = g.input("x", [2, 4, 6, 6])
    c = g.conv(x, 4, 4)
    params = g.bn_params("bn", 4)
    g.initializers[-1] = oh.make_tensor("bn.var", 1, [4], [1e-3, 2e-3, 5e-4, 1e-2])
    model = g.build(g.bn(c, 4, params=params, epsilon=epsilon))
    optimized, _ = fuse(model)
    assert "BatchNormalization" not in ops(optimized)
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
def test_every_batch_norm_version(opset):
    # Pitfall 6: versions 7, 9, 14 and 15 all fold (15 is the one optimizers forget).
    g = GraphBuilder(opset=opset)
    x = g.input("x", [2, 3, 6, 6])
    model = g.build(g.bn(g.conv(x, 3, 5), 5))
    optimized, report = fuse(model)
    assert ops(optimized) == {"Conv": 1}, report.refusals
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_fp16_model_folds_in_float64_then_rounds_once():
    # Pitfall 7: folding in fp16 would round γ/σ, W·γ/σ and the bias each; we round once.
    g = GraphBuilder(dtype=np.float16)
    x = g.input("x", [1, 4, 6, 6])
    model = g.build(g.bn(g.conv(x, 4, 4, name="conv"), 4, name="bn"))
    optimized, _ = fuse(model)
    w = initializer(model, "conv.weight").astype(np.float64)
    gamma, var = initializer(model, "bn.scale"), initializer(model, "bn.var")
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    expected = (w * scale.reshape(-1, 1, 1, 1)).astype(np.float16)
    np.testing.assert_array_equal(initializer(optimized, "conv.weight"), expected)
    assert initializer(optimized, "conv.bias").dtype == np.float16
    # fp16 has an 11-bit significand (step 9.8e-4 near 1): the fused and unfused graphs
    # round at different places, so they agree to a few fp16 steps, not to 1e-4.
    assert_same(model, optimized, rtol=1e-2, atol=1e-2)


# --- Case 2: ConvTranspose ----------------------------------------------------------------


@pytest.mark.parametrize(("cin", "cout", "group"), [(4, 6, 1), (6, 6, 1), (6, 6, 2), (6, 6, 6)])
def test_conv_transpose_scales_axis_1_per_group(cin, cout, group):
    # Pitfall 1: the weight is (Cin, Cout/g, k, k); scaling axis 0 is silently wrong.
    g = GraphBuilder()
    x = g.input("x", [2, cin, 4, 4])
    model = g.build(g.bn(g.conv_transpose(x, cin, cout, group=group, bias=False), cout))
    optimized, _ = fuse(model)
    assert ops(optimized) == {"ConvTranspose": 1}
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    transpose=st.booleans(),
    groups=st.sampled_from([1, 2, 3]),
    per_group=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    kernel=st.integers(1, 3),
    bias=st.booleans(),
    epsilon=st.sampled_from([1e-5, 1e-3, 0.5]),
    seed=st.integers(0, 2**16),
)
def test_any_conv_bn_pair_folds_exactly(transpose, groups, per_group, kernel, bias, epsilon, seed):
    # Cases 1 and 2 over channel counts, groups, kernels, biases and ε.
    cin, cout = per_group[0] * groups, per_group[1] * groups
    g = GraphBuilder(seed=seed)
    x = g.input("x", [2, cin, 5, 5])
    if transpose:
        y = g.conv_transpose(x, cin, cout, k=kernel, group=groups, bias=bias)
    else:
        y = g.conv(x, cin, cout, k=kernel, group=groups, bias=bias)
    model = g.build(g.bn(y, cout, epsilon=epsilon))
    optimized, _ = fuse(model)
    assert "BatchNormalization" not in ops(optimized)
    assert_same(model, optimized, rtol=1e-4, atol=1e-5, seed=seed)


# --- Case 3: Gemm -------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c", ["vector", "row", "absent"])
def test_gemm_bn(trans_b, c):
    g = GraphBuilder()
    x = g.input("x", ["N", 5])
    w = g.param("w", [6, 5] if trans_b else [5, 6])
    inputs = [x, w] + ([g.param("c", {"vector": [6], "row": [1, 6]}[c])] if c != "absent" else [])
    fc = g.node("Gemm", inputs, transB=trans_b, alpha=0.5, beta=2.0)
    model = g.build(g.bn(fc, 6))
    optimized, _ = fuse(model)
    assert ops(optimized) == {"Gemm": 1}
    assert_same(model, optimized, rtol=1e-4, atol=1e-5, N=3)


# --- Cases 4 and 5: MatMul (+ Add) --------------------------------------------------------


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_bn(bias_first):
    g = GraphBuilder()
    x = g.input("x", [3, 5])
    mm = g.node("MatMul", [x, g.param("w", [5, 6])])
    b = g.param("b", [6])
    add = g.node("Add", [b, mm] if bias_first else [mm, b])
    model = g.build(g.bn(add, 6))
    optimized, _ = fuse(model)
    assert ops(optimized) == {"MatMul": 1, "Add": 1}
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_matmul_alone_gets_the_shift_as_an_add():
    g = GraphBuilder()
    x = g.input("x", [3, 5])
    model = g.build(g.bn(g.node("MatMul", [x, g.param("w", [5, 6])]), 6, name="bn"))
    optimized, _ = fuse(model)
    assert ops(optimized) == {"MatMul": 1, "Add": 1}
    assert optimized.graph.output[0].name == "bn"
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_matmul_on_a_3d_input_is_refused():
    # BN normalises axis 1; after a MatMul on (N, T, K) that is T, not the features.
    g = GraphBuilder()
    x = g.input("x", [2, 6, 5])
    mm = g.node("MatMul", [x, g.param("w", [5, 6])])
    assert_refused(g.build(g.bn(mm, 6)), "rank 3")


# --- What sits around the pair ------------------------------------------------------------


def test_chain_conv_bn_conv_bn_fuses_every_pair():
    # Pitfall 10.
    g = GraphBuilder()
    x = g.input("x", [1, 3, 8, 8])
    y = g.bn(g.conv(x, 3, 4), 4)
    y = g.bn(g.conv(y, 4, 4, bias=False), 4)
    y = g.bn(g.conv(g.node("Relu", [y]), 4, 2), 2)
    model = g.build(y)
    optimized, report = fuse(model)
    assert ops(optimized) == {"Conv": 3, "Relu": 1} and len(report.notes) == 3
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_parameters_from_constant_nodes_and_identity_chains_are_constants():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    c = g.conv(x, 3, 2)
    scale, beta, mean, var = g.bn_params("bn", 2)
    tensor = g.initializers.pop(-1)  # var becomes a Constant node, mean an Identity of one
    var = g.node("Constant", [], value=tensor)
    mean = g.node("Identity", [g.node("Identity", [mean])])
    model = g.build(g.bn(c, 2, params=[scale, beta, mean, var]))
    optimized, _ = fuse(model)
    assert "BatchNormalization" not in ops(optimized)
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_shared_weight_is_copied_not_changed_in_place():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    w = g.param("w", [4, 3, 3, 3])
    a = g.node("Conv", [x, w], pads=[1, 1, 1, 1])
    b = g.node("Conv", [x, w], pads=[1, 1, 1, 1])
    model = g.build(g.bn(a, 4), b)
    optimized, _ = fuse(model)
    assert ops(optimized) == {"Conv": 2}
    np.testing.assert_array_equal(initializer(optimized, "w"), initializer(model, "w"))
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


def test_bn_output_that_is_a_graph_output_keeps_its_name():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    model = g.build(g.bn(g.conv(x, 3, 2), 2, name="scores"))
    optimized, _ = fuse(model)
    assert [o.name for o in optimized.graph.output] == ["scores"]
    assert optimized.graph.node[0].output[0] == "scores"
    assert_same(model, optimized, rtol=1e-4, atol=1e-5)


# --- Refusals -----------------------------------------------------------------------------


def test_refused_when_the_conv_output_has_another_reader():
    # Pitfall 2: folding would hand the other reader rescaled values.
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    c = g.conv(x, 3, 2, name="conv")
    model = g.build(g.node("Add", [g.bn(c, 2), g.node("Relu", [c], name="side")]))
    report = assert_refused(model, "also feeds Relu side")
    assert "conv" in report.refusals[0]


def test_refused_when_something_sits_between():
    # Pitfall 3: a ReLU (or pool) between conv and BN does not commute with the rescale.
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    model = g.build(g.bn(g.node("Relu", [g.conv(x, 3, 2, name="conv")], name="relu"), 2))
    assert_refused(model, "Relu relu, which sits between Conv conv and it")


def test_refused_when_the_conv_output_is_a_graph_output():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    c = g.conv(x, 3, 2)
    assert_refused(g.build(g.bn(c, 2), c), "is also a graph output")


def test_refused_in_training_mode():
    # Pitfall 5: training_mode=1 normalises with the batch's statistics.
    g = GraphBuilder(opset=15)
    x = g.input("x", [4, 3, 5, 5])
    y = g.bn(g.conv(x, 3, 2), 2, n_out=3, training_mode=1)
    assert_refused(g.build(y), "training_mode=1")


def test_refused_with_training_outputs_before_opset_14():
    # Pitfall 5: before opset 14, extra outputs are what selects training.
    g = GraphBuilder(opset=9)
    x = g.input("x", [4, 3, 5, 5])
    y = g.bn(g.conv(x, 3, 2), 2, n_out=5)
    assert_refused(g.build(y), "training outputs")


def test_refused_when_initializers_are_also_graph_inputs():
    # Pitfall 9: IR 3 lists initializers as inputs; a caller may feed other values.
    g = GraphBuilder(opset=9)
    x = g.input("x", [1, 3, 5, 5])
    y = g.bn(g.conv(x, 3, 2), 2)
    for tensor in g.initializers:
        g.input(tensor.name, list(tensor.dims))
    assert_refused(g.build(y, ir_version=3), "also a graph input")


def test_refused_when_running_statistics_are_not_constants():
    # Pitfall 5: without fixed running statistics there is nothing to fold.
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    mean = g.input("mean", [2])
    scale, beta, _, var = g.bn_params("bn", 2)
    model = g.build(g.bn(g.conv(x, 3, 2), 2, params=[scale, beta, mean, var]))
    assert_refused(model, "its mean is not a constant: 'mean' is a graph input")


def test_refused_when_the_conv_weight_is_computed():
    g = GraphBuilder()
    x = g.input("x", [1, 3, 5, 5])
    w = g.node("Neg", [g.param("w", [2, 3, 1, 1])], name="neg")
    model = g.build(g.bn(g.node("Conv", [x, w], name="conv"), 2))
    assert_refused(model, "the weight of Conv conv is not a constant")


def test_refused_for_an_unknown_batch_norm_version():
    g = GraphBuilder(opset=6)
    x = g.input("x", [1, 3, 5, 5])
    model = g.build(g.bn(g.conv(x, 3, 2), 2, is_test=1))
    optimized, report = fuse(model)
    assert ops(optimized)["BatchNormalization"] == 1
    assert "BatchNormalization-6" in report.refusals[0]


def test_refused_when_bn_follows_a_graph_input():
    g = GraphBuilder()
    x = g.input("x", [1, 2, 5, 5])
    assert_refused(g.build(g.bn(x, 2)), "is not computed by a layer")

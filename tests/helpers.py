"""Shared test helpers: numeric comparisons with tolerances at the call site.

Two kinds of comparison, chosen by what is compared:

* `assert_close` checks a value the test can state (a pixel, a loss, a learning
  rate): plain elementwise |actual - expected| <= atol + rtol·|expected|.

* `assert_fp32_close` checks two fp32 implementations of the same function
  (PyTorch against onnxruntime, a served model against the same model run in
  process, an optimized graph against the original). Neither is exact: each
  differs from the true (float64) result by rounding noise whose size depends
  on the summation order, and the order depends on the CPU (vector width, the
  kernel onnxruntime or oneDNN picks, thread count). The noise is proportional
  to the magnitude of the numbers being summed, not to the element being
  compared: a deep net whose logits reach 45 carries about 3e-5 of absolute
  noise on every logit, also on one whose value is 0.02, where a bare
  atol 1e-5 then fails on one CPU and passes on another. So atol is scaled by
  the output's magnitude, max(1, max|expected|), exactly as the optimizer's
  verifier does (compiler/optimizer/verify.py): for outputs of order 1 the
  bound is plain rtol 1e-4, atol 1e-5.

  Why this is sound, not lucky: measured against a float64 run of the same
  module, PyTorch's and onnxruntime's fp32 errors on the zoo's deepest nets are
  about 6e-7·max|y| (resnet34 at 96x96: max|y| 45.4, errors 2.9e-5 and 2.7e-5),
  so the bound leaves a margin of more than 10x for other CPUs' kernels, while a
  real defect (a wrong weight, padding or axis) moves outputs by a sizable
  fraction of max|y|, four orders of magnitude above it.
"""

from __future__ import annotations

import numpy as np

FP32_RTOL = 1e-4
FP32_ATOL = 1e-5  # times max(1, max|expected|); see the module docstring


def _as_array(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, possibly requiring grad
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def assert_close(actual, expected, *, rtol: float, atol: float, what: str = "values") -> None:
    """Elementwise |actual - expected| <= atol + rtol·|expected|, with a useful message."""
    actual, expected = _as_array(actual), _as_array(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    error = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    bad = ~(error <= bound)  # NaN anywhere is a difference
    if bad.any():
        worst = np.unravel_index(np.argmax(np.nan_to_num(error - bound, nan=np.inf)), error.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ beyond rtol={rtol}, "
            f"atol={atol}; worst at {worst}: {actual[worst]} vs {expected[worst]}"
        )


def fp32_scale(expected) -> float:
    """max(1, max|expected|): what atol is multiplied by for fp32 comparisons."""
    values = np.abs(_as_array(expected))
    finite = values[np.isfinite(values)]
    return max(1.0, float(finite.max())) if finite.size else 1.0


def assert_fp32_close(
    actual,
    expected,
    *,
    rtol: float = FP32_RTOL,
    atol: float = FP32_ATOL,
    what: str = "values",
) -> None:
    """Two fp32 implementations of one function agree: |a - e| <= atol·scale + rtol·|e|,
    scale = max(1, max|e|) (why: the module docstring)."""
    assert_close(actual, expected, rtol=rtol, atol=atol * fp32_scale(expected), what=what)


def open_classifier(name: str, channels: int, kernel: int) -> str:
    """A classifier whose input H and W are open: conv, ReLU, global pool, fc (10 classes
    when trained on digits, 5 otherwise)."""
    return f"""\
name: {name}
task: classification
inputs:
  image: [{channels}, null, null]
layers:
  - {{name: conv, op: conv, channels: 4, kernel: {kernel}}}
  - {{name: relu, op: relu}}
  - {{name: pool, op: adaptive_avg_pool, output: 1}}
  - {{name: flatten, op: flatten}}
  - {{name: fc, op: fc, units: {10 if channels == 1 else 5}}}
training: {{epochs: 1, batch_size: 64}}
"""


def slow_model(convs: int, size: int = 96, channels: int = 16) -> bytes:
    """An ONNX model that takes a while: `convs` 3x3 convolutions on x [batch, channels,
    size, size], then the mean of each channel, y [batch, channels] (about 0.35 ms a
    convolution at the defaults, batch 1, on a 2-core VM): requests stay in flight and
    queue long enough to be caught there."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((channels, channels, 3, 3)) * 0.05).astype(np.float32)
    nodes, name = [], "x"
    for i in range(convs):
        nodes.append(helper.make_node("Conv", [name, "w"], [f"c{i}"], pads=[1, 1, 1, 1]))
        name = f"c{i}"
    nodes.append(helper.make_node("ReduceMean", [name], ["y"], axes=[2, 3], keepdims=0))
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 13)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()

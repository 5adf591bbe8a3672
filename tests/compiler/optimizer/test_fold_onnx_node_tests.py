"""Constant folding against onnxruntime on onnx's own node tests.

Each single-node test case of the ops that make up shape and constant
computations is rebuilt with its inputs as initializers and its output
added to a graph input (so it is not itself a graph output): the node is
then all-constant, ConstantFolding evaluates it with ONNX's reference
evaluator, and the pipeline's verification compares the result with what
onnxruntime computes for the original.
"""

import functools
import warnings

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import numpy_helper

from netc.compiler.optimizer.api import optimize_model
from netc.compiler.optimizer.verify import VerificationError
from netc.errors import UserError

OPS = {
    "Shape", "Size", "Gather", "GatherElements", "Unsqueeze", "Squeeze", "Concat", "Slice",
    "Reshape", "Flatten", "Cast", "Range", "ConstantOfShape", "Expand", "Tile", "Transpose",
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Abs", "Floor", "Ceil", "Where",
    "Equal", "Less", "Greater", "Not", "ReduceProd", "ReduceSum", "ReduceMax", "Min", "Max",
    "Clip", "Split", "Erf", "Exp", "Reciprocal", "MatMul", "Gemm", "Mod", "CumSum",
}  # fmt: skip


@functools.cache
def folding_cases() -> list:
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases(None)
    for case in cases:
        model = case.model
        if model is None or len(model.graph.node) != 1 or not case.data_sets:
            continue
        node = model.graph.node[0]
        inputs, outputs = case.data_sets[0]
        if node.op_type not in OPS or len(outputs) != 1:
            continue
        out = outputs[0]
        arrays = [*inputs, out]
        if any(not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub" for a in arrays):
            continue
        found.append((case.name, model, inputs, out))
    return found


def as_constant_graph(model, inputs, out) -> onnx.ModelProto:
    node = model.graph.node[0]
    elem = oh.np_dtype_to_tensor_dtype(out.dtype)
    graph = oh.make_graph(
        [node, oh.make_node("Add", [node.output[0], "z"], ["y"])],
        "fold",
        [oh.make_tensor_value_info("z", elem, list(out.shape))],
        [oh.make_tensor_value_info("y", elem, list(out.shape))],
        initializer=[numpy_helper.from_array(a, i.name) for a, i in zip(inputs, model.graph.input)],
    )
    rebuilt = oh.make_model(graph, opset_imports=model.opset_import)
    rebuilt.ir_version = model.ir_version
    return rebuilt


def test_folded_constants_agree_with_onnxruntime_on_onnx_node_tests():
    checked, folded, failures = 0, 0, []
    for name, model, inputs, out in folding_cases():
        rebuilt = as_constant_graph(model, inputs, out)
        try:
            onnx.checker.check_model(rebuilt)
        except onnx.checker.ValidationError:
            continue  # an Add the dtype does not allow (bool outputs)
        try:
            result = optimize_model(rebuilt, name=name)  # raises unless it verifies
        except VerificationError as exc:
            failures.append(f"{name}: {exc}")
            continue
        except UserError:
            continue  # the original itself does not run in onnxruntime
        checked += 1
        folded += result.nodes_after < result.nodes_before
    assert not failures, "\n".join(failures[:10])
    assert checked >= 80 and folded >= 0.9 * checked, (checked, folded)


@pytest.mark.parametrize("op", ["Shape", "Gather", "Concat", "Unsqueeze", "Slice"])
def test_the_shape_chain_ops_are_among_the_cases(op):
    # The loop above would pass vacuously if onnx renamed its cases; it must see these.
    assert any(model.graph.node[0].op_type == op for _, model, _, _ in folding_cases())

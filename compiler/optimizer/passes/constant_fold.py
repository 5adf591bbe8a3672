"""Constant folding: Constant nodes become initializers, nodes of constants become their value."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes.inferred import Dims, infer_dims, static
from netc.compiler.optimizer.rewrite import constant, label
from netc.compiler.optimizer.verify import RANDOM_OPS

# A folded value up to this size is always kept (shape vectors, scalars, small
# tables); a larger one only when it is no larger than the constants it frees.
ALWAYS_FOLD_BYTES = 4096
# Ops never evaluated here: their output is not a function of their inputs
# (random), or folding them is the job of a pass that knows their algebra.
NOT_FOLDED = RANDOM_OPS | {"Constant", "Identity", "Dropout"}
# Ops on which ONNX's reference evaluator and onnxruntime disagree beyond rtol 1e-4 (or
# in dtype) on some of onnx's own node tests: of 983 single-node cases run both ways,
# only these differed. Folding one would make the verification fail, so they are not
# folded.
DISAGREEING_OPS = {
    "Attention",
    "DFT",
    "STFT",
    "GRU",
    "LSTM",
    "RNN",
    "MaxUnpool",
    "Resize",
    "StringConcat",
    "StringNormalizer",
}
NOT_FOLDED |= DISAGREEING_OPS
# A quantized model's DequantizeLinear of an int8 weight is the pattern runtimes turn
# into int8 kernels: folded to float, the conv would run in float.
NOT_FOLDED |= {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Ops whose output can be far larger than their inputs: evaluated only when shape
# inference has said how large, so that a ConstantOfShape of 10⁹ elements is refused
# before it is computed, not after it has filled the memory.
GROWING_OPS = {
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Range",
    "Resize",
    "Upsample",
    "Pad",
    "OneHot",
    "EyeLike",
    "MatMul",
    "Gemm",
    "Einsum",
    "Col2Im",
    "CenterCropPad",
}


class ConstantFolding(OptimizerPass):
    """Replace what is known before run time by its value.

    1. Constant node (value, value_float(s), value_int(s), value_string(s))
       → an initializer of the same name. A Constant whose output is a graph
       output is kept (a graph output cannot be an initializer in every
       runtime); a sparse_value one is kept.
    2. A node of the default domain whose every input is a constant (an
       initializer that is not a graph input, or a case-1 value; through
       Identity) → its outputs become initializers, evaluated by ONNX's
       reference evaluator with the model's opset. y = op(c₁, …, cₙ) is the
       definition of op, so the only conditions are that op is a function of
       its inputs and that the evaluation is exact enough (the pipeline's
       onnxruntime check compares it with what onnxruntime computes).
       Reshape of a weight initializer feeding Gemm or MatMul is this case.

    Refused, with the reason:
    - random ops, nodes with subgraphs, nodes of other domains, the ops
      of DISAGREEING_OPS (the reference evaluator and onnxruntime differ),
      and (De)QuantizeLinear (a quantized model's int8 weights stay int8);
    - outputs that are graph outputs (they keep their producer, see case 1);
    - a result larger than ALWAYS_FOLD_BYTES and larger than the constants
      that only this node reads: folding a Tile, Expand or ConstantOfShape
      would make the file bigger (judged from inferred shapes before the
      evaluation; an op of GROWING_OPS whose size inference cannot tell is
      not evaluated at all);
    - ops the reference evaluator cannot run, or results that are not tensors.
    Initializers that are also graph inputs (IR 3) are not constants: a
    caller may feed them.
    """

    name = "constant_folding"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opsets = dict(model.opset_imports)
        self._model = model
        self._dims: dict[ir.Value, Dims] | None = None  # inferred when a candidate first needs it
        self._dtypes: dict[ir.Value, ir.DataType] = {}
        modified = False
        lifted = 0
        for node in list(graph):
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "Constant":
                lifted += self._lift(graph, node)  # Case 1
            elif node.op_type not in NOT_FOLDED and node.inputs:
                modified |= self._fold(graph, node, opsets)  # Case 2
        if lifted:
            self.note(f"{lifted} Constant node{'s' * (lifted > 1)} → initializers")
        return ir.passes.PassResult(model, modified or bool(lifted))

    def _lift(self, graph: ir.Graph, node: ir.Node) -> bool:
        out = node.outputs[0]
        if out.is_graph_output():
            self.refuse(f"{label(node, with_op=True)} kept: its output is a graph output")
            return False
        tensor = _constant_tensor(node)
        if isinstance(tensor, str):
            self.refuse(f"{label(node, with_op=True)} kept: {tensor}")
            return False
        _replace_with_initializer(graph, node, [tensor])
        return True

    def _fold(self, graph: ir.Graph, node: ir.Node, opsets: dict[str, int]) -> bool:
        arrays: list[np.ndarray | None] = []
        for value in node.inputs:
            if value is None:
                arrays.append(None)
                continue
            data = constant(value)
            if isinstance(data, str):
                return False  # not a candidate: silent, most nodes are like this
            arrays.append(data)
        what = label(node, with_op=True)
        if any(a.type in _GRAPH_ATTRS for a in node.attributes.values()):
            self.refuse(f"{what} not folded: it has a subgraph")
            return False
        for out in node.outputs:
            if out.is_graph_output():
                self.refuse(f"{what} not folded: its output {out.name!r} is a graph output")
                return False
        freed = sum(
            a.nbytes
            for a, v in zip(arrays, node.inputs)
            if a is not None and v is not None and _only_reader(v, node)
        )
        estimate = self._estimated_bytes(node)
        if estimate is None and node.op_type in GROWING_OPS:
            self.refuse(f"{what} not folded: the size of its value is not known beforehand")
            return False
        if estimate is not None and self._too_big(estimate, freed):
            self.refuse(_too_big_reason(what, estimate, freed))
            return False
        results = _evaluate(node, arrays, opsets)
        if isinstance(results, str):
            self.refuse(f"{what} not folded: {results}")
            return False
        size = sum(r.nbytes for r in results)
        if self._too_big(size, freed):
            self.refuse(_too_big_reason(what, size, freed))
            return False
        tensors = [ir.tensor(r, name=out.name) for r, out in zip(results, node.outputs)]
        _replace_with_initializer(graph, node, tensors)
        shapes = ", ".join(str(list(r.shape)) for r in results)
        self.note(f"{what} folded into a constant ({shapes})")
        return True

    def _too_big(self, size: int, freed: int) -> bool:
        """Folding a value of `size` bytes that frees `freed` bytes would grow the file."""
        return size > ALWAYS_FOLD_BYTES and size > freed

    def _estimated_bytes(self, node: ir.Node) -> int | None:
        """The size of the node's outputs by shape inference, or None when not known."""
        if self._dims is None:
            self._dims = infer_dims(self._model, self._dtypes)
        total = 0
        for out in node.outputs:
            dims = static(self._dims.get(out))
            if dims is None:
                return None
            dtype = self._dtypes.get(out)
            total += math.ceil(math.prod(dims) * (dtype.itemsize if dtype is not None else 8))
        return total


class LargeConstantFolding(ConstantFolding):
    """ConstantFolding without the size cap, on request (--enable fold_large_constants).

    For models that compute their weights at load time, such as the onnx
    package's "light" model zoo whose every weight is a ConstantOfShape: the
    weights become initializers (the file grows to their full size, as with
    onnx-simplifier or onnxslim), and then BN and the other folds can reach
    them. A value whose size shape inference cannot tell beforehand is still
    not computed. Runs right after ConstantFolding.
    """

    name = "large_constant_folding"
    flag = "fold_large_constants"

    def _too_big(self, size: int, freed: int) -> bool:
        return size > MAX_FOLD_BYTES


# Even on request, no folded value above this: past 2 GB a model needs external data.
MAX_FOLD_BYTES = 2**30


_GRAPH_ATTRS = (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)


def _too_big_reason(what: str, size: int, freed: int) -> str:
    return (
        f"{what} not folded: its value ({size:,} bytes) is larger than the constants "
        f"it reads ({freed:,} bytes), so folding would make the file bigger"
    )


def _only_reader(value: ir.Value, node: ir.Node) -> bool:
    return (
        value.is_initializer()
        and not value.is_graph_output()
        and all(use.node is node for use in value.uses())
    )


def _constant_tensor(node: ir.Node) -> ir.TensorProtocol | str:
    """The value of a Constant node, or why it has none netc reads."""
    if len(node.attributes) != 1:
        return f"it has {len(node.attributes)} value attributes, not 1"
    attr_name, attr = next(iter(node.attributes.items()))
    name = node.outputs[0].name
    if attr_name == "value":
        tensor = attr.as_tensor()
        return (
            ir.Tensor(tensor.numpy(), name=name)
            if not isinstance(tensor, ir.StringTensor)
            else tensor
        )
    makers = {
        "value_int": (ir.DataType.INT64, attr.value),
        "value_ints": (ir.DataType.INT64, attr.value),
        "value_float": (ir.DataType.FLOAT, attr.value),
        "value_floats": (ir.DataType.FLOAT, attr.value),
    }
    if attr_name in makers:
        dtype, data = makers[attr_name]
        return ir.tensor(list(data) if attr_name.endswith("s") else data, dtype=dtype, name=name)
    if attr_name in ("value_string", "value_strings"):
        return ir.StringTensor(np.array(attr.value, dtype=np.bytes_), name=name)
    return f"its value is a {attr_name}, which netc does not fold"


def _replace_with_initializer(
    graph: ir.Graph, node: ir.Node, tensors: list[ir.TensorProtocol]
) -> None:
    """Each output of `node` becomes an initializer of the same name; the node goes."""
    for out, tensor in zip(node.outputs, tensors):
        if not out.uses():
            continue  # an unused optional output: nothing reads it
        value = ir.Value(
            name=out.name,
            shape=ir.Shape(tensor.shape.numpy()),
            type=ir.TensorType(tensor.dtype),
            const_value=tensor,
        )
        value.meta.update(out.meta)
        out.replace_all_uses_with(value)
        out.name = None
        graph.register_initializer(value)
    graph.remove(node, safe=True)


def _evaluate(
    node: ir.Node, arrays: list[np.ndarray | None], opsets: dict[str, int]
) -> list[np.ndarray] | str:
    """The node's outputs on `arrays`, by ONNX's reference evaluator; or why not."""
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(arrays)]
    outs = [f"out{i}" for i in range(len(node.outputs))]
    proto = ir.serde.serialize_node(node)
    del proto.input[:], proto.output[:]
    proto.input.extend(names)
    proto.output.extend(outs)
    inputs = [
        onnx.helper.make_tensor_value_info(
            n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape
        )
        for n, a in zip(names, arrays)
        if a is not None and a.dtype != object
    ]
    graph = onnx.helper.make_graph(
        [proto], "fold", inputs, [onnx.helper.make_empty_tensor_value_info(o) for o in outs]
    )
    version = opsets.get("", opsets.get("ai.onnx", 1))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", version)])
    feeds = {n: a for n, a in zip(names, arrays) if a is not None}
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as exc:  # an op or a type the reference evaluator lacks
        text = " ".join(str(exc).split())[:200]
        return f"the reference evaluator cannot run it ({type(exc).__name__}: {text})"
    arrays_out = []
    for result in results:
        if not isinstance(result, np.ndarray) and not np.isscalar(result):
            return f"it computes a {type(result).__name__}, not a tensor"
        arrays_out.append(np.asarray(result))
    return arrays_out

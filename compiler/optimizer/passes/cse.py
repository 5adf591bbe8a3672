"""Common subexpression elimination: identical nodes on identical inputs are computed once."""

from __future__ import annotations

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.rewrite import bypass, label
from netc.compiler.optimizer.verify import RANDOM_OPS


class CommonSubexpressionElimination(OptimizerPass):
    """Merge nodes that compute the same thing: f(x₁…xₙ) twice → once.

    1. Two nodes with the same domain, op type, attributes and inputs compute
       the same outputs; the later one's readers read the earlier one's
       outputs and the later one goes. Inputs are the same when they are the
       very same value, or two constants (initializers that are not graph
       inputs) of equal dtype, shape and contents: two 1x1 convs with equal
       weights on one input are one conv.
    Refused or skipped: random ops and Dropout (two draws differ), nodes with subgraphs,
    nodes with more than one output, and a later node whose output is a
    graph output while the earlier one's output is too (one value cannot
    carry both names). Applied in graph order, so a merge upstream makes
    the nodes below it identical in turn.
    """

    name = "common_subexpression_elimination"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        seen: dict[tuple, list[ir.Node]] = {}
        modified = False
        for node in list(graph):
            key = _key(node)
            if key is None:
                continue
            candidates = seen.setdefault(key, [])
            first = next((c for c in candidates if _same_constants(c, node)), None)
            if first is None:
                candidates.append(node)
                continue
            problem = bypass(graph, node, first.outputs[0])
            if problem is None:
                self.note(f"{label(node, with_op=True)} removed: it repeats {label(first)}")
                modified = True
            else:
                self.refuse(f"{label(node, with_op=True)} repeats {label(first)}: {problem}")
        return ir.passes.PassResult(model, modified)


_DRAWS = RANDOM_OPS | {"Dropout"}  # a Dropout left in the graph may be in training mode


def _key(node: ir.Node) -> tuple | None:
    if len(node.outputs) != 1 or node.op_type in _DRAWS or not node.inputs:
        return None
    attrs = []
    for name, attr in sorted(node.attributes.items()):
        if attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            return None
        value = attr.value
        if isinstance(value, ir.StringTensor):
            value = (value.dtype, tuple(value.shape), tuple(value.string_data()))
        elif isinstance(value, ir.TensorProtocol):
            value = (value.dtype, tuple(value.shape), value.tobytes())
        elif isinstance(value, list):
            value = tuple(value)
        attrs.append((name, attr.type, value))
    inputs = tuple(_input_key(v) for v in node.inputs)
    return (node.domain, node.op_type, node.overload, inputs, tuple(attrs))


def _is_constant(value: ir.Value) -> bool:
    return value.is_initializer() and not value.is_graph_input() and value.const_value is not None


def _input_key(value: ir.Value | None) -> object:
    """The value itself, or for a constant its dtype and shape (contents are compared
    only between nodes whose keys match, see `_same_constants`)."""
    if value is None:
        return None
    if _is_constant(value):
        tensor = value.const_value
        assert tensor is not None
        return ("constant", tensor.dtype, tuple(tensor.shape))
    return id(value)


def _same_constants(first: ir.Node, node: ir.Node) -> bool:
    """The constant inputs of two nodes with equal keys hold equal data."""
    for a, b in zip(first.inputs, node.inputs):
        if a is None or b is None or a is b or not _is_constant(a):
            continue
        x, y = a.const_value, b.const_value
        assert x is not None and y is not None
        if isinstance(x, ir.StringTensor) or isinstance(y, ir.StringTensor):
            if not isinstance(x, ir.StringTensor) or not isinstance(y, ir.StringTensor):
                return False
            if list(x.string_data()) != list(y.string_data()):
                return False
        elif x.tobytes() != y.tobytes():
            return False
    return True

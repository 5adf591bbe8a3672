"""Common subexpression elimination: identical nodes on identical inputs are computed once."""

from __future__ import annotations

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.rewrite import bypass, label
from netc.compiler.optimizer.verify import RANDOM_OPS


class CommonSubexpressionElimination(OptimizerPass):
    """Merge nodes that compute the same thing: f(x₁…xₙ) twice → once.

    1. Two nodes with the same domain, op type, attributes and the very same
       input values (not merely equal ones: DuplicateInitializerRemoval merges
       equal constants) compute the same outputs; the later one's readers
       read the earlier one's outputs and the later one goes.
    Refused or skipped: random ops and Dropout (two draws differ), nodes with subgraphs,
    nodes with more than one output, and a later node whose output is a
    graph output while the earlier one's output is too (one value cannot
    carry both names). Applied in graph order, so a merge upstream makes
    the nodes below it identical in turn.
    """

    name = "common_subexpression_elimination"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        seen: dict[tuple, ir.Node] = {}
        modified = False
        for node in list(graph):
            key = _key(node)
            if key is None:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = node
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
    inputs = tuple(id(v) if v is not None else None for v in node.inputs)
    return (node.domain, node.op_type, node.overload, inputs, tuple(attrs))

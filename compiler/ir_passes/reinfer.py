"""Re-run shape inference over an IR graph after a pass changed it."""

from __future__ import annotations

from dataclasses import replace

from netc.compiler.ir import Graph, GraphInput
from netc.compiler.ops import OPS, ShapeError
from netc.errors import SpecError


def reinfer(graph: Graph, inputs: dict[str, GraphInput] | None = None) -> Graph:
    """The same graph with every node's shape inferred again (from `inputs` if given)."""
    inputs = inputs or graph.inputs
    shapes = {name: item.shape for name, item in inputs.items()}
    nodes = []
    for node in graph.nodes:
        in_shapes = [shapes[s] for s in node.inputs]
        try:
            shape = OPS[node.op].infer(node.attrs, in_shapes)
        except ShapeError as exc:
            raise SpecError(
                exc.message,
                loc=node.loc,
                layer=node.name,
                expected=exc.expected,
                found=exc.found,
                hint=exc.hint,
            ) from None
        nodes.append(replace(node, shape=shape))
        shapes[node.name] = shape
    result = replace(graph, inputs=dict(inputs), nodes=nodes)
    result.verify()
    return result

"""Remove pools that copy their input."""

from __future__ import annotations

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc


class PoolIdentityPass(OptimizerPass):
    """Remove pools whose output equals their input.

    1. AveragePool/MaxPool with every kernel dim 1, every stride 1 and no
       padding: pool(x) = x (each window is one element; dilation and
       ceil_mode change nothing when the kernel is 1). A MaxPool whose
       Indices output is used is kept.
    2. GlobalAveragePool/GlobalMaxPool over a static 1x1 (all ones) spatial
       size: GAP(x) = x.

    The pool's readers read its input instead. When the pool's output is a
    graph output, its input takes the output's name; the pool is kept when
    that input is itself a graph input, initializer or graph output.
    """

    name = "pool-identity"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.domain != "":
                continue
            why = self._copies_input(node)
            if why is None:
                continue
            modified |= self._remove(model.graph, node, why)
        return ir.passes.PassResult(model, modified)

    def _copies_input(self, node: ir.Node) -> str | None:
        """Why `node` is an identity (for the note), or None."""
        if node.op_type in pc.POOL_OPS:
            # Case 1: kernel 1, stride 1, no padding.
            window = pc.read_window(node)
            if isinstance(window, str) or pc.uses_indices(node):
                return None
            if not window.padded and set(window.kernel) | set(window.strides) == {1}:
                return f"kernel {'x'.join(map(str, window.kernel))}, stride 1, no padding"
        elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
            # Case 2: a global pool over a 1x1 map.
            dims = pc.proven_dims(node.inputs[0])
            if dims is not None and set(dims) == {1}:
                return "input is already 1x1"
        return None

    def _remove(self, graph: ir.Graph, node: ir.Node, why: str) -> bool:
        source, result = node.inputs[0], node.outputs[0]
        if result.is_graph_output() and (
            source.is_graph_input() or source.is_initializer() or source.is_graph_output()
        ):
            self.refuse(
                f"kept {pc.node_label(node)} ({why}): it maps graph input/output "
                f"{source.name!r} to graph output {result.name!r}"
            )
            return False
        is_output = result.is_graph_output()
        result.replace_all_uses_with(source, replace_graph_outputs=True)
        if is_output:
            source.name = result.name
        graph.remove(node, safe=True)
        self.note(f"removed {pc.node_label(node)}: {why}")
        return True

"""Remove pools that copy their input."""

from __future__ import annotations

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc


class IdentityPoolRemoval(OptimizerPass):
    """Remove pools whose output equals their input: pool(x) = x.

    1. AveragePool/MaxPool with every kernel dim 1, every stride 1 and no
       padding: each window is one element (dilation and ceil_mode change
       nothing with a kernel of 1). A MaxPool whose Indices output is used
       is kept.
    2. GlobalAveragePool/GlobalMaxPool whose input is 1x1 (all spatial dims
       1) for every input the model accepts (see `pool_common.proven_dims`).

    The pool's readers read its input instead. When the pool's output is a
    graph output its input takes the output's name; the pool is kept when
    that input is itself a graph input, initializer or graph output.
    """

    name = "identity_pool_removal"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in [n for n in model.graph if n.domain == ""]:
            why = _copies_input(node)
            if why is None:
                continue
            modified |= self.remove_identity(model.graph, node, why)
        return ir.passes.PassResult(model, modified)


def _copies_input(node: ir.Node) -> str | None:
    """Why `node` is an identity (for the note), or None."""
    if node.op_type in pc.POOL_OPS:
        # Case 1: kernel 1, stride 1, no padding.
        window = pc.read_window(node)
        if isinstance(window, str) or pc.uses_indices(node) or window.padded:
            return None
        if set(window.kernel) | set(window.strides) == {1}:
            return "kernel 1, stride 1, no padding"
    elif node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        # Case 2: a global pool over a 1x1 map.
        dims = pc.proven_dims(node.inputs[0])
        if dims is not None and set(dims) == {1}:
            return "its input is already 1x1"
    return None

"""Shape folding: Shape and Size of tensors whose dims are fixed become constants."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes.constant_fold import _replace_with_initializer
from netc.compiler.optimizer.passes.inferred import Dims, infer_dims
from netc.compiler.optimizer.rewrite import constant, label


class ShapeFolding(OptimizerPass):
    """Replace shape computations by their values where the dims cannot change.

    Dims come from ONNX shape inference with the open dims left open (see
    `inferred`): a dim is folded only when it is the same int at every input
    size the model accepts; batch and open spatial dims stay computed.
    1. Shape(x) (start/end of Shape-15 applied) → a constant, when every dim
       it returns is an int.
    2. Gather(Shape(x), i) with a constant i → a constant, when the dims it
       picks are ints, though others are open (Shape(x)[1] of an NCHW tensor
       with an open batch is C).
    3. Size(x) → a constant, when every dim of x is an int.
    The rest of a Shape → Gather → Unsqueeze → Concat → Reshape chain is then
    made of constants, and ConstantFolding (after this pass) evaluates it.
    Refused: outputs that are graph outputs; shapes inference cannot find.
    """

    name = "shape_folding"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if not any(n.op_type in ("Shape", "Size") for n in graph):
            return ir.passes.PassResult(model, False)
        dims = infer_dims(model)
        modified = False
        for node in list(graph):
            if node.graph is None or node.domain not in ("", "ai.onnx") or not node.inputs:
                continue
            if node.op_type not in ("Shape", "Size") or node.inputs[0] is None:
                continue
            x_dims = dims.get(node.inputs[0])
            what = label(node, with_op=True)
            if x_dims is None:
                self.refuse(f"{what} kept: the shape of its input is not known")
                continue
            if node.outputs[0].is_graph_output():
                self.refuse(f"{what} kept: its output is a graph output")
                continue
            if node.op_type == "Size":
                modified |= self._fold(graph, node, x_dims, size=True)  # Case 3
                continue
            picked = _shape_slice(node, x_dims)
            if all(isinstance(d, int) for d in picked):
                modified |= self._fold(graph, node, picked)  # Case 1
                continue
            for reader in list(node.outputs[0].consumers()):
                if reader.op_type == "Gather" and reader.inputs[0] is node.outputs[0]:
                    modified |= self._fold_gather(graph, reader, picked)  # Case 2
            if node.outputs[0].consumers():
                open_dims = [i for i, d in enumerate(picked) if not isinstance(d, int)]
                self.refuse(f"{what} kept: dims {open_dims} are open")
        return ir.passes.PassResult(model, modified)

    def _fold(self, graph: ir.Graph, node: ir.Node, dims: Dims, size: bool = False) -> bool:
        if size:
            if not all(isinstance(d, int) for d in dims):
                self.refuse(f"{label(node, with_op=True)} kept: its input has open dims")
                return False
            value = np.array(int(np.prod([int(d) for d in dims])), dtype=np.int64)  # type: ignore[arg-type]
        else:
            value = np.array([int(d) for d in dims], dtype=np.int64)  # type: ignore[arg-type]
        name = node.outputs[0].name
        _replace_with_initializer(graph, node, [ir.tensor(value, name=name)])
        self.note(f"{label(node, with_op=True)} → {value.tolist()}")
        return True

    def _fold_gather(self, graph: ir.Graph, gather: ir.Node, dims: Dims) -> bool:
        what = label(gather, with_op=True)
        if len(gather.inputs) < 2 or gather.outputs[0].is_graph_output():
            return False
        index = constant(gather.inputs[1])
        if isinstance(index, str):
            self.refuse(f"{what} kept: its index is not a constant ({index})")
            return False
        flat = [int(i) + (len(dims) if int(i) < 0 else 0) for i in index.reshape(-1)]
        if any(not 0 <= i < len(dims) for i in flat):
            return False  # out of range: an error at run time, left for it to report
        picked = [dims[i] for i in flat]
        if not all(isinstance(d, int) for d in picked):
            return False
        value = np.array(picked, dtype=np.int64).reshape(index.shape)
        name = gather.outputs[0].name
        _replace_with_initializer(graph, gather, [ir.tensor(value, name=name)])
        self.note(f"{what} of a shape → {value.tolist()}")
        return True


def _shape_slice(node: ir.Node, dims: Dims) -> Dims:
    """The dims Shape returns: all of them, or [start:end] (Shape-15), clamped like ONNX."""
    rank = len(dims)
    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return dims[start:end]

"""Clean-up passes: nodes that copy their input, dead nodes, unused and duplicate initializers."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.rewrite import constant, label
from netc.compiler.optimizer.shapes import quiet_onnx_ir


class IdentityElimination(OptimizerPass):
    """Remove Identity nodes: y = Identity(x) → readers of y read x.

    1. y is not a graph output: its readers read x; the node goes.
    2. y is a graph output: x takes the name y, then as in case 1.
    3. y is a graph output and x is a graph input, an initializer or another
       graph output: kept (one value cannot carry two names).

    onnx_ir's IdentityEliminationPass has cases 1-3 but, in case 3, treats an
    x that is already a graph output like case 2 and leaves the graph with a
    duplicated output name; hence this small rewrite of it. Main graph only.
    """

    name = "identity_elimination"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in [n for n in model.graph if n.op_type == "Identity" and n.domain == ""]:
            if len(node.inputs) != 1 or node.inputs[0] is None or len(node.outputs) != 1:
                continue
            modified |= self.remove_identity(model.graph, node)  # cases 1-3
        return ir.passes.PassResult(model, modified)


class DropoutRemoval(OptimizerPass):
    """Remove inference-mode Dropout nodes: Dropout(x) = x when not training.

    1. Dropout-7 to -11: always x at inference (scaling happens in training).
    2. Dropout-12 and later: x unless the optional training_mode input is
       true; a training_mode that is not a constant false is refused.
    3. Dropout-1 and -6: x only with is_test=1.
    The optional mask output must be unused (a used mask is refused), and a
    Dropout whose output is a graph output keeps it under the same rule as
    IdentityElimination's case 3.
    """

    name = "dropout_removal"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        modified = False
        for node in [n for n in model.graph if n.op_type == "Dropout" and n.domain == ""]:
            problem = _dropout_problem(node, node.version or opset)
            if problem is not None:
                self.refuse(f"{label(node, with_op=True)} kept: {problem}")
                continue
            modified |= self.remove_identity(model.graph, node)
        return ir.passes.PassResult(model, modified)


def _dropout_problem(node: ir.Node, opset: int) -> str | None:
    if not node.inputs or node.inputs[0] is None:
        return "it has no input"
    if len(node.outputs) > 1 and (node.outputs[1].uses() or node.outputs[1].is_graph_output()):
        return f"its mask output {node.outputs[1].name!r} is used"
    if opset < 7 and node.attributes.get_int("is_test", 0) != 1:
        return "it is in training mode (is_test=0)"  # Case 3
    if opset >= 12 and len(node.inputs) > 2 and node.inputs[2] is not None:
        mode = constant(node.inputs[2])  # Case 2
        if isinstance(mode, str):
            return f"its training_mode input is not a constant: {mode}"
        if bool(mode.reshape(-1)[0]) if mode.size else False:
            return "it is in training mode (training_mode=true)"
    return None


class DeadNodeRemoval(OptimizerPass):
    """Remove nodes whose outputs nothing reads, and initializers nothing reads.

    onnx_ir's RemoveUnusedNodesPass, reported: a node goes when none of its
    outputs is read or is a graph output; an initializer goes when no node
    reads it and it is neither a graph input nor a graph output. Unused
    optional trailing outputs (a Dropout mask, an inference BN's statistics)
    are dropped from the nodes that stay.
    """

    name = "dead_node_removal"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        nodes_before = {id(n): label(n, with_op=True) for n in graph}
        initializers_before = list(graph.initializers)
        with quiet_onnx_ir():
            result = RemoveUnusedNodesPass()(model)
        kept = {id(n) for n in graph}
        dead = [name for key, name in nodes_before.items() if key not in kept]
        unused = [name for name in initializers_before if name not in graph.initializers]
        for name in dead:
            self.note(f"{name} removed")
        for name in unused:
            self.note(f"initializer {name!r} removed")
        return ir.passes.PassResult(model, result.modified or bool(dead or unused))


class DuplicateInitializerRemoval(OptimizerPass):
    """Merge initializers with the same dtype, shape and bytes into the first of them.

    What onnx_ir's DeduplicateInitializersPass does (in every graph, with no size
    limit), reported, and cheaper on large models: only initializers that share
    dtype and shape with another are read at all (protobuf copies the data on
    each read), and they are told apart by a digest, not by keeping every
    tensor's bytes; a digest match is confirmed byte for byte. Initializers
    that are graph inputs or outputs are left alone.
    """

    name = "duplicate_initializer_removal"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for graph in model.graphs():
            groups: dict[tuple, list[ir.Value]] = {}
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or value.is_graph_input() or value.is_graph_output():
                    continue
                groups.setdefault((tensor.dtype, tuple(tensor.shape)), []).append(value)
            for members in groups.values():
                if len(members) > 1:
                    modified |= self._merge(graph, members)
        return ir.passes.PassResult(model, modified)

    def _merge(self, graph: ir.Graph, members: list[ir.Value]) -> bool:
        kept: dict[bytes, list[ir.Value]] = {}
        merged = False
        for value in members:
            content = _content(value)
            same = [k for k in kept.setdefault(_digest(content), []) if _content(k) == content]
            if not same:
                kept[_digest(content)].append(value)
                continue
            value.replace_all_uses_with(same[0])
            graph.initializers.pop(value.name or "")
            self.note(f"{value.name!r} merged into {same[0].name!r}")
            merged = True
        return merged


def _content(value: ir.Value) -> bytes:
    tensor = value.const_value
    assert tensor is not None
    if tensor.dtype.is_string():  # as onnx_ir's pass: fixed-width strings
        return np.array(tensor.string_data()).tobytes()  # type: ignore[attr-defined]
    return tensor.tobytes()


def _digest(content: bytes) -> bytes:
    return hashlib.blake2b(content, digest_size=16).digest()

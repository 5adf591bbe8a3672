"""Merge two consecutive pools of the same kind into one."""

from __future__ import annotations

import math

import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc
from netc.compiler.optimizer.rewrite import pair_label, sole_reader_problem


class PoolMerge(OptimizerPass):
    """Merge pool₂(pool₁(x)) into one pool of the same kind.

    Per spatial axis, pool₁ has kernel k₁, stride s₁; pool₂ has k₂, s₂.

    1. AveragePool ∘ AveragePool, both non-overlapping (k₁ = s₁, k₂ = s₂):
       = AveragePool(kernel k₁·k₂, stride k₁·k₂). Output i of the merged
       pool averages input [i·k₁k₂, (i+1)·k₁k₂), which is the union of the
       k₂ disjoint, equal-sized windows pool₂ averages the averages of; an
       average of equal-sized averages is the average of the union.
    2. MaxPool ∘ MaxPool with s₁ ≤ k₁ (pool₁'s windows overlap or touch):
       = MaxPool(kernel k₁ + (k₂−1)·s₁, stride s₁·s₂). Output i of pool₂
       takes the max over pool₁'s windows j ∈ [i·s₂, i·s₂+k₂), whose union
       is the contiguous range [i·s₁s₂, i·s₁s₂ + (k₂−1)·s₁ + k₁); a max of
       maxes is the max of the union. (Case 1's kernel is this with s₁ = k₁.)

    Both cases keep the output size: floor((floor((H−k₁)/s₁)+1−k₂)/s₂)+1
    = floor((H−k₁−(k₂−1)s₁)/(s₁s₂))+1 since floor(floor(a/b)/c) = floor(a/bc).

    Preconditions: no padding and dilation 1 in both pools; no partial
    window (ceil_mode=1 is accepted only when the input size is fixed, see
    `pool_common.proven_dims`, and every window is full: then it equals
    floor mode); pool₁'s output is read only
    by pool₂ and is not a graph output; a MaxPool's Indices are unused.
    The merge is made only when the merged kernel reads no more elements
    than the two pools did per output (∏k ≤ ∏s₂·∏k₁ + ∏k₂), so stride-1
    chains such as 3x3/1 ∘ 3x3/1 (one 5x5 window: 25 reads against 18)
    are kept.
    """

    name = "pool_merge"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        for node in list(model.graph):
            if node.graph is None or node.op_type not in pc.POOL_OPS or node.domain != "":
                continue
            if not node.inputs or node.inputs[0] is None:
                continue  # an empty input name: onnx's checker refuses it, nothing to merge
            first = node.inputs[0].producer()
            if first is None or first.op_type != node.op_type or first.domain != "":
                continue
            modified |= self._try_merge(model.graph, first, node)
        return ir.passes.PassResult(model, modified)

    def _try_merge(self, graph: ir.Graph, first: ir.Node, second: ir.Node) -> bool:
        version = second.version or self.opset
        if version < 10:  # the merged node spells out ceil_mode, which opset 10 brought
            self.refuse(f"{pair_label(first, second)} kept apart: opset {version} (before 10)")
            return False
        merged = _merged_window(first, second)
        if isinstance(merged, str):
            self.refuse(f"{pair_label(first, second)} kept apart: {merged}")
            return False
        kernel, strides = merged
        attributes: dict[str, int | list[int]] = {
            "kernel_shape": list(kernel),
            "strides": list(strides),
            "pads": [0] * 2 * len(kernel),
            "ceil_mode": 0,
        }
        for key in ("dilations", "count_include_pad", "storage_order"):
            if key in first.attributes:
                attributes[key] = first.attributes[key].value
        if "dilations" in attributes:
            attributes["dilations"] = [1] * len(kernel)
        pooled = ir.node(
            second.op_type, [first.inputs[0]], attributes, name=second.name, version=second.version
        )
        pooled.outputs[0].type = second.outputs[0].type
        pc.replace(graph, [first, second], [pooled], second.outputs[0], pooled.outputs[0])
        shape = "x".join(map(str, kernel)) + "/" + "x".join(map(str, strides))
        self.note(f"{pair_label(first, second)} → one {second.op_type} {shape}")
        return True


def _merged_window(
    first: ir.Node, second: ir.Node
) -> tuple[tuple[int, ...], tuple[int, ...]] | str:
    """The merged (kernel, strides), or why the pair does not merge."""
    problem = sole_reader_problem(first.outputs[0], second)
    if problem is not None:
        return problem
    if pc.uses_indices(first) or pc.uses_indices(second):
        return "MaxPool Indices are used"
    w1, w2 = pc.read_window(first), pc.read_window(second)
    if isinstance(w1, str):
        return w1
    if isinstance(w2, str):
        return w2
    if w1.rank != w2.rank:
        return "pools of different rank"
    if w1.padded or w2.padded:
        return "a pool pads its input"
    if {*w1.dilations, *w2.dilations} != {1}:
        return "a pool is dilated"
    dims1 = pc.proven_dims(first.inputs[0])
    if w1.ceil_mode or w2.ceil_mode:
        if dims1 is None:
            return "ceil_mode with an unknown input size (a window may be partial)"
        if w1.has_partial_window(dims1) or w2.has_partial_window(w1.output_dims(dims1)):
            return "ceil_mode with a partial window"
    if second.op_type == "AveragePool":
        # Case 1: non-overlapping averages.
        if w1.kernel != w1.strides or w2.kernel != w2.strides:
            return "an average pool's kernel differs from its stride (overlapping windows)"
    elif any(s > k for s, k in zip(w1.strides, w1.kernel)):
        # Case 2 needs pool₁'s windows to leave no gaps.
        return "the first max pool's stride exceeds its kernel (its windows leave gaps)"
    kernel = tuple(k1 + (k2 - 1) * s1 for k1, k2, s1 in zip(w1.kernel, w2.kernel, w1.strides))
    strides = tuple(s1 * s2 for s1, s2 in zip(w1.strides, w2.strides))
    reads_before = math.prod(w2.strides) * math.prod(w1.kernel) + math.prod(w2.kernel)
    if math.prod(kernel) > reads_before:
        return (
            f"the merged {'x'.join(map(str, kernel))} window reads "
            f"{math.prod(kernel)} elements per output against {reads_before}"
        )
    return kernel, strides

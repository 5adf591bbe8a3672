"""Remove nodes that compute their input, and collapse chains of shape ops into one."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes.inferred import Dims, infer_dims, same_dims
from netc.compiler.optimizer.rewrite import constant, label

_SHAPE_KEEPING = {"Reshape", "Flatten", "Expand", "Slice", "Tile", "Pad"}
_NEUTRAL = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}


class RedundancyElimination(OptimizerPass):
    """Remove no-op nodes and collapse pairs of shape ops, using inferred shapes.

    No-op nodes, y = x → readers of y read x (shapes "equal" means equal at
    every input size: the same ints, or the same named symbol):
    1. Reshape, Flatten, Expand, Tile whose output shape equals the input's
       (Tile: only with repeats all 1, since a repeat also copies data); and
       a Reshape whose target is built from x's own dims, as in
       x.view(x.size(0), -1) of an (N, C) x with N open: the target
       Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]) is [N, C] at every N.
    2. Slice whose output shape equals its input's and whose steps are all 1
       (a step of -1 over the whole axis keeps the shape but reverses it); or
       whose constant starts/ends cover every axis it slices, each of a fixed
       size, with step 1: x[:, :C] of a C-channel x with open H and W.
    3. Pad with constant pads all 0; Transpose with the identity perm; Cast
       to the type x already has; Concat of a single input.
    4. Mul/Div by a constant of ones, Add/Sub of a constant of zeros, when y
       has x's shape (the constant broadcasts into x and changes nothing).
    Chains, z = g(f(x)) → z = h(x):
    5. Reshape(Reshape(x, s₁), s₂) = Reshape(x, s₂): a reshape keeps the
       elements in order, so only the last target counts; refused when s₂ is
       not constant or holds a 0 (0 copies a dim of its input, which differs).
    6. Transpose(Transpose(x, p), q) = Transpose(x, r) with r[j] = p[q[j]],
       and x itself when r is the identity (inverse pairs).
    7. Unsqueeze(Squeeze(x, a), a) = x (the squeezed dims were 1) and
       Squeeze(Unsqueeze(x, a), a) = x, with the axes normalised against the
       rank they refer to; refused when the axes are not constants or a
       negative axis meets an unknown rank.
    In 5-7 the first node stays while anything else reads it (dead-code
    removal takes it otherwise). Every removal goes through `bypass`, so
    graph outputs keep their names (refused when it cannot).
    """

    name = "redundancy_elimination"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.dtypes: dict[ir.Value, ir.DataType] = {}
        self.dims = infer_dims(model, self.dtypes)
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.graph is None or node.domain not in ("", "ai.onnx"):
                continue  # removed by an earlier rewrite in this sweep
            if not node.inputs or node.inputs[0] is None or not node.outputs:
                continue
            why = self._noop(node)
            if why is not None:
                what = f"a {node.op_type} that computes its input ({why})"
                modified |= self.remove_identity(graph, node, what)
                continue
            rewrite = _CHAINS.get(node.op_type)
            if rewrite is not None:
                modified |= rewrite(self, graph, node)
        return ir.passes.PassResult(model, modified)

    def _shape(self, value: ir.Value | None) -> Dims | None:
        return None if value is None else self.dims.get(value)

    def _noop(self, node: ir.Node) -> str | None:
        """Why `node` computes its first input (cases 1-4), or None when it does not."""
        op, x, y = node.op_type, node.inputs[0], node.outputs[0]
        assert x is not None  # call() skips nodes without a first input
        same = same_dims(self._shape(x), self._shape(y))
        if op == "Reshape" and len(node.inputs) > 1 and self._target_is_own_shape(node):
            return "its target is its input's own shape"  # Case 1
        if op in _SHAPE_KEEPING and same:
            if op == "Tile" and not _all_equal(node, 1, 1):
                return None
            if op == "Slice" and len(node.inputs) > 4 and node.inputs[4] is not None:
                if not _all_equal(node, 4, 1):
                    return None  # Case 2
            if op == "Pad" and not _all_equal(node, 1, 0):
                return None
            return "its output has its input's shape"  # Cases 1, 2
        if op == "Slice" and _covers_whole_axes(node, self._shape(x)):
            return "it takes every element of the axes it slices"  # Case 2
        if op == "Pad" and len(node.inputs) > 1 and _all_equal(node, 1, 0):
            return "all its pads are 0"  # Case 3
        if op == "Transpose":
            perm = node.attributes.get_ints("perm")
            if perm is not None and list(perm) == list(range(len(perm))):
                return "its perm is the identity"
        dtype = x.dtype or self.dtypes.get(x)
        if op == "Cast" and dtype is not None:
            to = node.attributes.get_int("to")
            if to is not None and ir.DataType(to) == dtype:
                return f"its input is already {dtype.name}"
        if op == "Concat" and len(node.inputs) == 1:
            return "it has a single input"
        if op in _NEUTRAL and len(node.inputs) == 2 and same:  # Case 4
            other = constant(node.inputs[1])
            if not isinstance(other, str) and other.size and np.all(other == _NEUTRAL[op]):
                return f"it {op.lower()}s by {_NEUTRAL[op]:g} everywhere"
        return None

    def _target_is_own_shape(self, node: ir.Node) -> bool:
        """Case 1's Reshape(x, target) with target[i] = dim i of x at every size: each
        element dim i read from Shape(x), the fixed size of dim i, 0 (copy; allowzero=0),
        or a single -1 (the one dim left, once all others match)."""
        x, target = node.inputs[0], node.inputs[1]
        dims = self._shape(x)
        elements = None if dims is None else _shape_elements(target, x, len(dims), depth=8)
        if dims is None or elements is None or len(elements) != len(dims):
            return False
        copy_zero = node.attributes.get_int("allowzero", 0) == 0
        unmatched = 0
        for i, element in enumerate(elements):
            if element == ("dim", i) or (isinstance(dims[i], int) and element == dims[i]):
                continue
            if element == 0 and copy_zero:
                continue
            if element == -1:
                unmatched += 1
                continue
            return False
        return unmatched <= 1

    def _reshape_pair(self, graph: ir.Graph, node: ir.Node) -> bool:
        # Case 5.
        first = _producer(node, "Reshape")
        if first is None or len(node.inputs) < 2:
            return False
        target = constant(node.inputs[1])
        what = f"{label(first, with_op=True)} → {label(node, with_op=True)}"
        if isinstance(target, str):
            self.refuse(f"{what} not merged: the second target is not a constant ({target})")
            return False
        if 0 in target.tolist() and node.attributes.get_int("allowzero", 0) == 0:
            self.refuse(f"{what} not merged: the second target copies a dim (0)")
            return False
        node.replace_input_with(0, first.inputs[0])
        self.note(f"{what}: one Reshape")
        return True

    def _transpose_pair(self, graph: ir.Graph, node: ir.Node) -> bool:
        # Case 6.
        first = _producer(node, "Transpose")
        if first is None:
            return False
        rank = len(d) if (d := self._shape(first.inputs[0])) is not None else None
        p, q = _perm(first, rank), _perm(node, rank)
        what = f"{label(first, with_op=True)} → {label(node, with_op=True)}"
        if p is None or q is None or len(p) != len(q):
            self.refuse(f"{what} not merged: a perm is missing and the rank is unknown")
            return False
        composed = [p[j] for j in q]
        source = first.inputs[0]
        assert source is not None
        if composed == list(range(len(composed))):
            return self.remove_identity_from(graph, node, source, f"{what} cancel")
        node.replace_input_with(0, source)
        node.attributes["perm"] = ir.AttrInt64s("perm", composed)
        self.note(f"{what}: one Transpose, perm {composed}")
        return True

    def _squeeze_pair(self, graph: ir.Graph, node: ir.Node) -> bool:
        # Case 7.
        inverse = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op_type]
        first = _producer(node, inverse)
        if first is None:
            return False
        source = first.inputs[0]
        assert source is not None
        what = f"{label(first, with_op=True)} → {label(node, with_op=True)}"
        x_dims = self._shape(source)
        rank = None if x_dims is None else len(x_dims)
        a, b = _axes(first), _axes(node)
        if a is None or b is None:
            self.refuse(f"{what} kept: the axes are not constants")
            return False
        if rank is not None and first.op_type == "Unsqueeze":
            rank += len(a)  # Squeeze(Unsqueeze(x, a), a): both count against the larger rank
        if (any(i < 0 for i in a + b)) and rank is None:
            self.refuse(f"{what} kept: negative axes and an unknown rank")
            return False
        if sorted(_normal(a, rank)) != sorted(_normal(b, rank)):
            return False
        return self.remove_identity_from(graph, node, source, f"{what} cancel")

    def remove_identity_from(
        self, graph: ir.Graph, node: ir.Node, source: ir.Value, why: str
    ) -> bool:
        """Readers of `node`'s output read `source` (a value before `node`'s own input)."""
        from netc.compiler.optimizer.rewrite import bypass

        problem = bypass(graph, node, source)
        if problem is None:
            self.note(why)
            return True
        self.refuse(f"{why}, but are kept: {problem}")
        return False


_CHAINS = {
    "Reshape": RedundancyElimination._reshape_pair,
    "Transpose": RedundancyElimination._transpose_pair,
    "Squeeze": RedundancyElimination._squeeze_pair,
    "Unsqueeze": RedundancyElimination._squeeze_pair,
}


Element = int | tuple[str, int]


def _shape_elements(
    value: ir.Value | None, x: ir.Value | None, rank: int, depth: int
) -> list[Element] | None:
    """A 1-D shape tensor as its elements: ints where constant, ("dim", i) where it is
    dim i of `x` read at run time (Shape(x), then Gather, Unsqueeze, Concat); None when
    it is anything else."""
    if value is None or depth == 0:
        return None
    data = constant(value)
    if not isinstance(data, str):
        return [int(v) for v in np.asarray(data).reshape(-1)] if data.ndim <= 1 else None
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape" and node.inputs[0] is x:
        start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end")
        if start != 0 or end is not None:
            return None
        return [("dim", i) for i in range(rank)]
    if op == "Concat" and node.attributes.get_int("axis", 0) in (0, -1):
        parts = [_shape_elements(v, x, rank, depth - 1) for v in node.inputs]
        if any(p is None for p in parts):
            return None
        return [e for p in parts if p is not None for e in p]
    if op == "Unsqueeze":
        inner = _shape_elements(node.inputs[0], x, rank, depth - 1)
        return inner if inner is not None and len(inner) == 1 else None
    if op == "Gather" and node.attributes.get_int("axis", 0) == 0 and len(node.inputs) == 2:
        source = _shape_elements(node.inputs[0], x, rank, depth - 1)
        index = constant(node.inputs[1])
        if source is None or isinstance(index, str) or index.size != 1:
            return None
        i = int(index.reshape(-1)[0])
        return [source[i]] if -len(source) <= i < len(source) else None
    return None


def _producer(node: ir.Node, op_type: str) -> ir.Node | None:
    value = node.inputs[0]
    producer = value.producer() if value is not None else None
    if producer is None or producer.op_type != op_type or producer.domain not in ("", "ai.onnx"):
        return None
    if not producer.inputs or producer.inputs[0] is None:
        return None
    return producer


def _all_equal(node: ir.Node, index: int, number: float) -> bool:
    """Input `index` of `node` is a constant whose every element is `number`."""
    if index >= len(node.inputs) or node.inputs[index] is None:
        return False
    data = constant(node.inputs[index])
    return not isinstance(data, str) and bool(np.all(data == number))


def _covers_whole_axes(node: ir.Node, dims: Dims | None) -> bool:
    """A Slice-10+ whose starts, ends, axes and steps are constants that take each
    sliced axis (of fixed size) whole, in order."""
    if dims is None or len(node.inputs) < 3:
        return False
    parts: list[list[int] | None] = []
    for index in range(1, 5):
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            parts.append(None)
            continue
        data = constant(value)
        if isinstance(data, str):
            return False
        parts.append([int(v) for v in np.asarray(data).reshape(-1)])
    starts, ends, axes, steps = parts
    assert starts is not None and ends is not None  # inputs 1 and 2 exist (checked above)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return False
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = axis + len(dims) if axis < 0 else axis
        size = dims[axis] if 0 <= axis < len(dims) else None
        if not isinstance(size, int) or step != 1:
            return False
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if start > 0 or end < size:
            return False
    return True


def _perm(node: ir.Node, rank: int | None) -> list[int] | None:
    perm = node.attributes.get_ints("perm")
    if perm is not None:
        return list(perm)
    return None if rank is None else list(reversed(range(rank)))  # the default: reverse


def _axes(node: ir.Node) -> list[int] | None:
    attr = node.attributes.get_ints("axes")
    if attr is not None:
        return list(attr)
    if len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    data = constant(node.inputs[1])
    return None if isinstance(data, str) else [int(i) for i in np.asarray(data).reshape(-1)]


def _normal(axes: list[int], rank: int | None) -> list[int]:
    return [i + rank if i < 0 and rank is not None else i for i in axes]

"""Symbolic shapes for the folding passes: what ONNX shape inference can say at every size.

Unlike `shapes.annotate_static_shapes` (one concrete input size, for MAC
counts), this keeps open dims open: a dim is an int only when it is that int
at every input size the model accepts. The model's own shapes are restored
afterwards, so the optimized file does not gain shapes it did not ask for.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from netc.compiler.optimizer.shapes import quiet_onnx_ir

Dims = tuple[int | str | None, ...]


def infer_dims(
    model: ir.Model, dtypes: dict[ir.Value, ir.DataType] | None = None
) -> dict[ir.Value, Dims]:
    """value → its dims (int, symbol name, or None for unknown), for every value
    shape inference reaches; values it cannot reach are absent. `dtypes`, when given,
    receives value → element type likewise."""
    graph = model.graph
    values = list(graph.inputs) + list(graph.initializers.values())
    values += [out for node in graph for out in node.outputs]
    # Inference also rewrites the types of values inside subgraphs (an If's branches):
    # those are restored too, though only the main graph's are reported.
    inner = [
        value
        for node in ir.traversal.RecursiveGraphIterator(graph)
        if node.graph is not graph
        for value in (*node.inputs, *node.outputs)
        if value is not None
    ]
    saved = [(v, v.shape, v.type) for v in values + inner]
    found: dict[ir.Value, Dims] = {}
    try:
        with quiet_onnx_ir():
            try:
                ShapeInferencePass(strict_mode=False)(model)
            except Exception:  # an op shape inference rejects: use what the model has
                pass
        for value in values:
            if value.shape is not None:
                found[value] = tuple(_dim(d) for d in value.shape.dims)
            if dtypes is not None and value.dtype is not None:
                dtypes[value] = value.dtype
    finally:
        for value, shape, type_ in saved:
            value.shape, value.type = shape, type_
    return found


def static(dims: Dims | None) -> tuple[int, ...] | None:
    """The dims when all are ints, else None."""
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


def same_dims(a: Dims | None, b: Dims | None) -> bool:
    """True when two shapes are equal at every input size: same rank, and each dim the
    same int or the same named symbol (an unknown dim equals nothing)."""
    if a is None or b is None or len(a) != len(b):
        return False
    return all(x is not None and x == y for x, y in zip(a, b))


def _dim(dim: object) -> int | str | None:
    if isinstance(dim, int):
        return dim
    value = getattr(dim, "value", None)
    # 'unk__3' is a name shape inference made up for a dim it could not compute: two such
    # names being equal says nothing, so they are unknown here
    if not isinstance(value, str) or not value or value.startswith("unk__"):
        return None
    return value

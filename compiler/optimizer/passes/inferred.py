"""Symbolic shapes for the folding passes: what ONNX shape inference can say at every size.

Unlike `shapes.annotate_static_shapes` (one concrete input size, for MAC
counts), this keeps open dims open: a dim is an int only when it is that int
at every input size the model accepts. The model's own shapes are restored
afterwards, so the optimized file does not gain shapes it did not ask for.
"""

from __future__ import annotations

import onnx_ir as ir

from netc.compiler.optimizer.shapes import shape_inference

Dims = tuple[int | str | None, ...]


def infer_dims(
    model: ir.Model, dtypes: dict[ir.Value, ir.DataType] | None = None
) -> dict[ir.Value, Dims]:
    """value → its dims (int, symbol name, or None for unknown), for every value
    shape inference reaches; values it cannot reach are absent. `dtypes`, when given,
    receives value → element type likewise."""
    found: dict[ir.Value, Dims] = {}
    with shape_inference(model) as values:
        for value in values:
            if value.shape is not None:
                found[value] = tuple(_dim(d) for d in value.shape.dims)
            if dtypes is not None and value.dtype is not None:
                dtypes[value] = value.dtype
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

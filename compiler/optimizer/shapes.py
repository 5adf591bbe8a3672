"""Static shapes for MAC counts: the shape every value has at one concrete input size.

Exported models often leave batch and spatial sizes open, so a value's own
`shape` cannot say how many multiply-accumulates a rewrite saves. Before the
passes run, `annotate_static_shapes` runs ONNX shape inference once with the
inputs fixed to concrete sizes and stores each value's resulting shape in
`value.meta[STATIC_SHAPE]`. The model's own shapes are left as they were, so
the optimized file does not gain shapes it did not ask for.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

STATIC_SHAPE = "netc.static_shape"


def annotate_static_shapes(model: ir.Model, input_shapes: Mapping[str, Sequence[int]]) -> None:
    """Record in `meta` the static shape of every value when the inputs have `input_shapes`.

    Inputs not named keep their declared shape. Inference failures are not
    errors: values it could not reach simply have no static shape.
    """
    with shape_inference(model, input_shapes) as values:
        for value in values:
            dims = static_dims(value.shape)
            if dims is not None:
                value.meta[STATIC_SHAPE] = dims


@contextlib.contextmanager
def shape_inference(
    model: ir.Model, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> Iterator[list[ir.Value]]:
    """ONNX shape inference run on `model` (its inputs first given `input_shapes`, where
    named) for the with-block, which gets the main graph's values to read; every value's
    shape and type, those inside subgraphs too (inference retypes an If's branches), are
    put back afterwards, so the optimized file does not gain shapes it did not ask for.
    An op inference rejects is not an error: values it could not reach keep what the
    model says."""
    graph = model.graph
    values = _all_values(graph)
    inner = [
        value
        for node in ir.traversal.RecursiveGraphIterator(graph)
        if node.graph is not graph
        for value in (*node.inputs, *node.outputs)
        if value is not None
    ]
    saved = [(v, v.shape, v.type) for v in values + inner]
    try:
        for value in graph.inputs:
            name = value.name
            if (
                input_shapes
                and name is not None
                and name in input_shapes
                and not value.is_initializer()
            ):
                value.shape = ir.Shape(list(input_shapes[name]))
        with quiet_onnx_ir():
            try:
                ShapeInferencePass(strict_mode=False)(model)
            except Exception:  # an op shape inference rejects: use what the model has
                pass
        yield values
    finally:
        for value, shape, type_ in saved:
            value.shape, value.type = shape, type_


def static_shape(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's shape when every dim is known: its own, else the annotated one."""
    if value is None:
        return None
    own = static_dims(value.shape)
    return own if own is not None else value.meta.get(STATIC_SHAPE)


def rank(value: ir.Value | None) -> int | None:
    """The number of dims of `value`, whether or not their sizes are known."""
    if value is None:
        return None
    if value.shape is not None:
        return len(value.shape)
    annotated = value.meta.get(STATIC_SHAPE)
    return None if annotated is None else len(annotated)


def numel(value: ir.Value | None) -> int | None:
    """The element count of `value` at its static shape, or None."""
    shape = static_shape(value)
    return None if shape is None else math.prod(shape)


def static_dims(shape: ir.Shape | None) -> tuple[int, ...] | None:
    if shape is None:
        return None
    dims = tuple(d for d in shape.dims if isinstance(d, int))
    return dims if len(dims) == len(shape.dims) else None


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    values = list(graph.inputs) + list(graph.initializers.values())
    values += [out for node in graph for out in node.outputs]
    return values


class quiet_onnx_ir:
    """Silence onnx_ir's warnings (a skipped initializer, a failed inference) for a block.

    They go to stderr through logging's last-resort handler and say nothing a
    netc user can act on; what matters ends up in the pass notes instead.
    """

    def __enter__(self) -> None:
        self._logger = logging.getLogger("onnx_ir")
        self._level = self._logger.level
        self._logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self._logger.setLevel(self._level)

"""What the pooling folds share: a pool's window geometry, the spatial sizes
they may rely on, and moving a pool ahead of the op that feeds it.

Not a pass. ONNX pooling semantics used throughout (AveragePool, MaxPool):
along each spatial axis of size H, with begin/end pads pb/pe, kernel k,
stride s and dilation d, the effective kernel is e = d·(k−1)+1 and the
output size is  floor((H+pb+pe−e)/s)+1  (ceil instead of floor when
ceil_mode=1, then dropping a last window that would start in the end
padding). A window of a ceil-mode pool is *partial* when it runs past the
end padding; such a window sums fewer elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.rewrite import NameScope, label
from netc.errors import InternalError

POOL_OPS = ("AveragePool", "MaxPool")


@dataclass(frozen=True)
class PoolWindow:
    """The window geometry of one AveragePool/MaxPool node, pads made explicit."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # x1_begin, x2_begin, ..., x1_end, x2_end, ...
    dilations: tuple[int, ...]
    ceil_mode: bool
    count_include_pad: bool

    @property
    def rank(self) -> int:
        return len(self.kernel)

    @property
    def padded(self) -> bool:
        return any(self.pads)

    @property
    def effective_kernel(self) -> tuple[int, ...]:
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations))

    def output_dims(self, dims: Sequence[int]) -> tuple[int, ...]:
        """Output spatial size for the static input spatial size `dims`."""
        out = []
        for axis, size in enumerate(dims):
            begin, end = self.pads[axis], self.pads[axis + self.rank]
            span = size + begin + end - self.effective_kernel[axis]
            stride = self.strides[axis]
            n = (-(-span // stride) if self.ceil_mode else span // stride) + 1
            if self.ceil_mode and (n - 1) * stride >= size + begin:
                n -= 1  # the last window would start in the end padding
            out.append(n)
        return tuple(out)

    def has_partial_window(self, dims: Sequence[int]) -> bool:
        """Whether some window (ceil mode only) runs past the padded input."""
        if not self.ceil_mode:
            return False
        for axis, (size, n) in enumerate(zip(dims, self.output_dims(dims))):
            padded = size + self.pads[axis] + self.pads[axis + self.rank]
            if (n - 1) * self.strides[axis] + self.effective_kernel[axis] > padded:
                return True
        return False

    def every_window_reads_input(self) -> bool:
        """Whether every window covers at least one input element (none lies
        wholly in the padding): no padding, or dilation 1 and each pad
        smaller than the kernel."""
        if not self.padded:
            return True
        return set(self.dilations) == {1} and all(
            pad < self.kernel[axis % self.rank] for axis, pad in enumerate(self.pads)
        )

    def reduces_positions(self, dims: Sequence[int] | None) -> bool:
        """Whether the pool outputs fewer positions than it reads; with unknown
        `dims`, whether some stride exceeds 1."""
        if dims is None:
            return math.prod(self.strides) > 1
        return math.prod(self.output_dims(dims)) < math.prod(dims)


def read_window(node: ir.Node) -> PoolWindow | str:
    """The window of an AveragePool/MaxPool node, or why it is not understood."""
    attrs = node.attributes
    kernel = tuple(attrs.get_ints("kernel_shape", ()))
    if not kernel:
        return "no kernel_shape"
    rank = len(kernel)
    strides = tuple(attrs.get_ints("strides", (1,) * rank))
    dilations = tuple(attrs.get_ints("dilations", (1,) * rank))
    pads = tuple(attrs.get_ints("pads", (0,) * 2 * rank))
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if any(k != 1 for k in kernel) or any(s != 1 for s in strides):
            return f"auto_pad={auto_pad} (its padding depends on the input size)"
        pads = (0,) * 2 * rank
    elif auto_pad == "VALID":
        pads = (0,) * 2 * rank
    if len(strides) != rank or len(dilations) != rank or len(pads) != 2 * rank:
        return "kernel_shape, strides, dilations and pads disagree in rank"
    if min(kernel) < 1 or min(strides) < 1 or min(dilations) < 1 or min(pads) < 0:
        return (
            f"kernel {list(kernel)}, strides {list(strides)}, dilations {list(dilations)} "
            f"or pads {list(pads)} out of range"
        )
    return PoolWindow(
        kernel=kernel,
        strides=strides,
        pads=pads,
        dilations=dilations,
        ceil_mode=bool(attrs.get_int("ceil_mode", 0)),
        count_include_pad=bool(attrs.get_int("count_include_pad", 0)),
    )


def uses_indices(node: ir.Node) -> bool:
    """Whether a MaxPool's optional Indices output is used (indices do not survive a fold)."""
    return len(node.outputs) > 1 and bool(
        node.outputs[1].uses() or node.outputs[1].is_graph_output()
    )


def counted_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The spatial size (dims after N and C) of `value` at the size the MAC
    counts use (see `shapes.annotate_static_shapes`), or None. For reports
    and for whether a rewrite pays, never for whether it is sound."""
    shape = shapes.static_shape(value)
    return None if shape is None or len(shape) < 3 else shape[2:]


def proven_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The spatial size of `value` for every input the model accepts, or None.

    That is its own static shape, or the annotated one when every graph input
    is declared with a static shape and annotated at that shape (then the
    annotation is the only size there is).
    """
    if value is None:
        return None
    own = shapes.static_dims(value.shape)
    if own is None:
        graph = value.graph
        if graph is None or not all(
            shapes.static_dims(v.shape) is not None
            and v.meta.get(shapes.STATIC_SHAPE) == shapes.static_dims(v.shape)
            for v in graph.inputs
        ):
            return None
        own = shapes.static_shape(value)
    return None if own is None or len(own) < 3 else own[2:]


def set_static_shape(value: ir.Value, dims: Sequence | None) -> None:
    """Give a value a new pass created the counting shape `dims` (if known)."""
    if dims is not None and all(isinstance(d, int) for d in dims):
        value.meta[shapes.STATIC_SHAPE] = tuple(dims)


def move_pool_ahead(graph: ir.Graph, op: ir.Node, pool: ir.Node, names: NameScope) -> ir.Node:
    """Rewrite x → op → pool as x → pool → op; returns the new pool node.

    `op` must be elementwise along the spatial axes with its data on input 0
    and only its first output used, and `pool`'s output must be its only
    reader. The pool and op keep their names and attributes; the pool's old
    output name now names op's output, so graph outputs keep their names.
    """
    source, result = op.inputs[0], pool.outputs[0]
    if source is None:  # onnx's checker refuses such a model before any pass runs
        raise InternalError(f"{label(op, with_op=True)} has no data input to pool")
    new_pool = ir.Node(
        "",
        pool.op_type,
        [source],
        attributes=list(pool.attributes.values()),
        name=pool.name,
        version=pool.version,
    )
    pooled = new_pool.outputs[0]
    pooled.name = names.fresh(f"{source.name}_pooled")
    pooled.type = source.type
    if source.shape is not None and result.shape is not None:
        pooled.shape = ir.Shape([result.shape[0], source.shape[1], *result.shape.dims[2:]])
    source_dims, result_dims = shapes.static_shape(source), shapes.static_shape(result)
    if source_dims is not None and result_dims is not None:
        set_static_shape(pooled, (*result_dims[:1], source_dims[1], *result_dims[2:]))
    new_op = ir.Node(
        op.domain,
        op.op_type,
        [pooled, *op.inputs[1:]],
        attributes=list(op.attributes.values()),
        name=op.name,
        version=op.version,
    )
    replace(graph, [op, pool], [new_pool, new_op], result, new_op.outputs[0])
    return new_pool


def replace(
    graph: ir.Graph,
    old_nodes: Sequence[ir.Node],
    new_nodes: Sequence[ir.Node],
    old: ir.Value,
    new: ir.Value,
) -> None:
    """Put `new_nodes` where the last of `old_nodes` was; `new` takes over
    `old`'s readers, name, type, shapes and graph-output place."""
    set_static_shape(new, shapes.static_shape(old))
    ir.convenience.replace_nodes_and_values(
        graph, old_nodes[-1], old_nodes, new_nodes, [old], [new]
    )

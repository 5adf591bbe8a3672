"""Move an average pool ahead of the pointwise affine op that feeds it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc


class AvgPoolAheadPass(OptimizerPass):
    """Rewrite x → f → AveragePool as x → AveragePool → f, for a pointwise
    affine f (1x1 conv, BatchNormalization), so f runs on the pool's output
    positions only (a 2x2/2 pool: a quarter of them).

    Write f(v) = A·v + b at every position p. An AveragePool output is
    Σ_{p∈W} v_p / n_W over the in-bounds positions p of its window W (padding
    contributes zeros), with n_W the divisor. So
        AvgPool(f(x)) = A·AvgPool(x) + b·|W|/n_W.

    1. f linear (b = 0: a 1x1 conv without bias or with an all-zero constant
       bias): AvgPool(A·x) = A·AvgPool(x) for every AveragePool, whatever its
       padding, count_include_pad or ceil_mode, since A·0 = 0.
    2. f affine (b ≠ 0: a 1x1 conv with bias, BN): additionally |W| = n_W for
       every window, i.e. count_include_pad=0 (the divisor counts in-bounds
       elements; then no window may lie wholly in padding), or no padding
       and no partial ceil_mode window (checked on static shapes). With zero
       padding and count_include_pad=1 the bias does not commute: a border
       window gives b·|W|/n_W ≠ b.

    Preconditions: the 1x1 conv has stride 1 and no padding (any group
    count); BN is in inference mode with only its first output used; f's
    output is read only by the pool and is not a graph output; the pool
    outputs fewer positions than it reads (else nothing is saved).

    Saved work: the conv's C_out·C_in/group MACs (BN: C multiply-adds) per
    position, on (input positions − output positions), reported for batch 1
    from static shapes; with symbolic shapes the note gives the fraction
    1 − 1/∏strides instead. The pool now averages f's input channels
    instead of its output channels.
    """

    name = "avgpool-ahead"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for pool in list(model.graph):
            if pool.op_type != "AveragePool" or pool.domain != "":
                continue
            op = pool.inputs[0].producer()
            if op is None or op.domain != "" or op.op_type not in ("Conv", "BatchNormalization"):
                continue
            modified |= self._try_move(model.graph, op, pool)
        return ir.passes.PassResult(model, modified)

    def _try_move(self, graph: ir.Graph, op: ir.Node, pool: ir.Node) -> bool:
        label = f"{pc.node_label(pool)} ahead of {pc.node_label(op)}"
        window = pc.read_window(pool)
        if isinstance(window, str):
            self.refuse(f"kept {label}: {window}")
            return False
        affine = _describe_affine(op)
        if isinstance(affine, str):
            self.refuse(f"kept {label}: {affine}")
            return False
        macs_per_position, has_bias = affine
        why = _unsound(op, pool, window, has_bias)
        if why is not None:
            self.refuse(f"kept {label}: {why}")
            return False
        dims = pc.counted_dims(op.inputs[0])
        pc.move_pool_ahead(graph, op, pool)
        self._report(label, op, window, dims, macs_per_position)
        return True

    def _report(
        self,
        label: str,
        op: ir.Node,
        window: pc.PoolWindow,
        dims: tuple[int, ...] | None,
        macs_per_position: int | None,
    ) -> None:
        if dims is None or macs_per_position is None:
            fraction = 1 - Fraction(1, math.prod(window.strides))
            self.note(
                f"moved {label}: saves about {fraction} of {op.name or op.op_type}'s "
                f"multiply-accumulates (input size unknown)"
            )
            return
        before, after = math.prod(dims), math.prod(window.output_dims(dims))
        saved = macs_per_position * (before - after)
        self.macs_saved += saved
        self.note(
            f"moved {label} ({window.describe()}): {op.op_type} now runs on {after} "
            f"instead of {before} positions, saving {saved:,} MACs at batch 1 "
            f"({pc.fraction_saved(before, after)} of its work)"
        )


def _describe_affine(op: ir.Node) -> tuple[int | None, bool] | str:
    """(MACs per position or None when unknown, has a bias), or why `op` is not
    a pointwise affine map."""
    if op.op_type == "BatchNormalization":
        if op.attributes.get_int("training_mode", 0) or any(
            out.uses() or out.is_graph_output() for out in op.outputs[1:]
        ):
            return "BatchNormalization in training mode"
        shape = shapes.static_shape(op.inputs[0])
        return (shape[1] if shape is not None and len(shape) > 1 else None), True
    weight = op.inputs[1]
    if weight is None or weight.shape is None:
        return "conv weight shape unknown"
    kernel = weight.shape.dims[2:]
    if any(k != 1 for k in kernel):
        return f"conv kernel {'x'.join(map(str, kernel))} is not 1x1"
    attrs = op.attributes
    if any(s != 1 for s in attrs.get_ints("strides", ())):
        return "strided conv"
    auto_pad = attrs.get_string("auto_pad", "NOTSET")
    if auto_pad == "NOTSET" and any(attrs.get_ints("pads", ())):
        return "padded conv"
    out_channels, in_per_group = weight.shape.dims[:2]
    macs = out_channels * in_per_group
    return (macs if isinstance(macs, int) else None), _has_bias(op)


def _has_bias(op: ir.Node) -> bool:
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if bias is None:
        return False
    const = pc.const_array(bias)
    return const is None or bool(np.any(const != 0))


def _unsound(op: ir.Node, pool: ir.Node, window: pc.PoolWindow, has_bias: bool) -> str | None:
    """Why moving `pool` ahead of `op` would change the result or save nothing."""
    consumer = pc.sole_consumer(op.outputs[0])
    if isinstance(consumer, str):
        return consumer
    dims = pc.counted_dims(op.inputs[0])
    if dims is not None and len(dims) != window.rank:
        return "pool rank differs from the input's"
    if not window.reduces_positions(dims):
        return "the pool keeps every position (nothing to save)"
    if not has_bias:
        return None  # Case 1: linear.
    # Case 2: affine; every window must divide by the count it sums.
    if window.count_include_pad:
        if window.padded:
            return "zero padding counted in the average (count_include_pad=1) scales the bias"
        proven = pc.proven_dims(op.inputs[0])
        if window.ceil_mode and (proven is None or window.has_partial_window(proven)):
            return "ceil_mode may leave a partial window, whose divisor is not its count"
    elif not window.every_window_reads_input():
        return "a window lies wholly in the padding"
    return None

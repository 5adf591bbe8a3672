"""Move an average pool ahead of the pointwise affine op that feeds it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc
from netc.compiler.optimizer.passes.conv_bn import read_batch_norm
from netc.compiler.optimizer.rewrite import NameScope, constant, label, sole_reader_problem


class AvgPoolAhead(OptimizerPass):
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
       every window. The divisor n_W counts the window's in-bounds elements
       when count_include_pad=0, and also its explicit padding when it is 1;
       a ceil_mode window's overhang past the padded input is never counted
       (onnxruntime, onnx.reference and PyTorch agree). So: count_include_pad
       =0 (with no window wholly in padding), or no padding at all. With zero
       padding counted, a border window gives b·|W|/n_W ≠ b.

    Preconditions: the 1x1 conv has stride 1 and no padding (any group
    count); BN is one `conv_bn.read_batch_norm` reads as a fixed per-channel
    affine map (inference mode, constant parameters, spatial=1); f's
    output is read only by the pool and is not a graph output; the pool
    outputs fewer positions than it reads (else nothing is saved).

    Saved work: the conv's C_out·C_in/group MACs (BN: C multiply-adds) per
    position, on (input positions − output positions), per image at the
    sizes `shapes` annotates; with unknown sizes the note gives the fraction
    1 − 1/∏strides instead. The pool now averages f's input channels
    instead of its output channels.
    """

    name = "avgpool_ahead"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        names = NameScope(model.graph)
        modified = False
        for pool in [n for n in model.graph if n.op_type == "AveragePool" and n.domain == ""]:
            source = pool.inputs[0]
            op = source.producer() if source is not None else None
            if op is None or op.domain != "" or op.op_type not in ("Conv", "BatchNormalization"):
                continue
            movable = _movable(op, pool, op.version or opset)
            if isinstance(movable, str):
                self.refuse(f"{label(pool, with_op=True)} kept after {label(op)}: {movable}")
                continue
            window, macs_per_position = movable
            dims = pc.counted_dims(op.inputs[0])
            pc.move_pool_ahead(model.graph, op, pool, names)
            self._report(op, pool, window, dims, macs_per_position)
            modified = True
        return ir.passes.PassResult(model, modified)

    def _report(
        self,
        op: ir.Node,
        pool: ir.Node,
        window: pc.PoolWindow,
        dims: tuple[int, ...] | None,
        macs_per_position: int | None,
    ) -> None:
        moved = f"{label(pool)} moved ahead of {label(op, with_op=True)}"
        if dims is None or macs_per_position is None:
            fraction = 1 - Fraction(1, math.prod(window.strides))
            self.note(f"{moved}: saves about {fraction} of its work (input size unknown)")
            return
        before, after = math.prod(dims), math.prod(window.output_dims(dims))
        saved = macs_per_position * (before - after)
        self.macs_saved += saved
        self.note(
            f"{moved}: {before} → {after} positions, {saved:,} MACs saved per image "
            f"({Fraction(before - after, before)} of its work)"
        )


def _read_affine(op: ir.Node, version: int) -> tuple[int | None, bool] | str:
    """(MACs per position, None when unknown; whether it has a bias), or why
    `op` is not a pointwise affine map."""
    if op.op_type == "BatchNormalization":
        bn = read_batch_norm(op, version)
        if isinstance(bn, str):
            return bn
        return bn.scale.size, True
    weight = op.inputs[1] if len(op.inputs) > 1 else None
    shape = shapes.static_shape(weight)
    if shape is None or len(shape) < 3:
        return "its weight shape is unknown"
    if any(k != 1 for k in shape[2:]):
        return f"its kernel {'x'.join(map(str, shape[2:]))} is not 1x1"
    attrs = op.attributes
    if any(s != 1 for s in attrs.get_ints("strides", ())):
        return "it is strided"
    if attrs.get_string("auto_pad", "NOTSET") == "NOTSET" and any(attrs.get_ints("pads", ())):
        return "it pads its input"
    return shape[0] * shape[1], _has_bias(op)


def _has_bias(op: ir.Node) -> bool:
    """Whether a conv adds a bias that is not all zeros (or may not be)."""
    bias = op.inputs[2] if len(op.inputs) > 2 else None
    if bias is None:
        return False
    data = constant(bias)
    return isinstance(data, str) or bool(np.any(data != 0))


def _movable(op: ir.Node, pool: ir.Node, version: int) -> tuple[pc.PoolWindow, int | None] | str:
    """The pool's window and `op`'s MACs per position, or why the pool stays after `op`."""
    affine = _read_affine(op, version)
    window = pc.read_window(pool)
    if isinstance(affine, str):
        return affine
    if isinstance(window, str):
        return window
    macs_per_position, has_bias = affine
    return _unsound(op, pool, window, has_bias) or (window, macs_per_position)


def _unsound(op: ir.Node, pool: ir.Node, window: pc.PoolWindow, has_bias: bool) -> str | None:
    """Why moving `pool` ahead of `op` would change the result or save nothing."""
    problem = sole_reader_problem(op.outputs[0], pool)
    if problem is not None:
        return problem
    dims = pc.counted_dims(op.inputs[0])
    if dims is not None and len(dims) != window.rank:
        return "the pool's rank differs from its input's"
    if not window.reduces_positions(dims):
        return "the pool keeps every position (nothing to save)"
    if not has_bias:
        return None  # Case 1: linear.
    # Case 2: affine; every window must divide by the count it sums.
    if window.count_include_pad and window.padded:
        return "the average counts zero padding (count_include_pad=1), which scales the bias"
    if not window.every_window_reads_input():
        return "a window lies wholly in the padding"
    return None

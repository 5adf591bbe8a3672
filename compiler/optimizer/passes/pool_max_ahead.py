"""Move a max pool ahead of the per-channel non-decreasing map that feeds it."""

from __future__ import annotations

import math

import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc
from netc.compiler.optimizer.passes.conv_bn import read_batch_norm
from netc.compiler.optimizer.rewrite import NameScope, label, sole_reader_problem


class MaxPoolAhead(OptimizerPass):
    """Rewrite x → g → MaxPool as x → MaxPool → g, for g non-decreasing per
    channel, so g runs on the pool's output positions only.

    For g non-decreasing, max_{p∈W} g(x_p) = g(max_{p∈W} x_p): the largest
    x_p is mapped to the largest g(x_p). MaxPool pads with −∞, which never
    wins a window that holds an input element, so padding is harmless as long
    as no window lies wholly in the padding.

    1. Relu, LeakyRelu with alpha ≥ 0, Clip (any bounds): non-decreasing.
    2. BatchNormalization, g(x) = γ·(x−μ)/√(σ²+ε) + β per channel: non-decreasing
       when every scale γ/√(σ²+ε) is positive (as `conv_bn.read_batch_norm`
       reads it: inference mode, constant parameters, spatial=1).

    Preconditions: g's output is read only by the pool and is not a graph
    output; the pool's Indices output is unused (ties under a flat g move
    the argmax); no window lies wholly in the padding; the pool outputs fewer
    positions than it reads (else nothing is saved). Repeats until no pool
    moves, so BN → Relu → MaxPool becomes MaxPool → BN → Relu.

    Behind a flag: after a conv, Conv → Relu → MaxPool becomes
    Conv → MaxPool → Relu, which onnxruntime can no longer fuse into one
    Conv+Relu kernel; on the CPU that costs about what the smaller Relu saves
    (resnet18's stem: ±0.4% with all onnxruntime optimizations, −2% with
    none), so only runtimes without activation fusion gain.
    """

    name = "maxpool_ahead"
    flag = "maxpool_ahead"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        names = NameScope(model.graph)
        modified = False
        pending = [n for n in model.graph if n.op_type == "MaxPool" and n.domain == ""]
        while pending:
            pool = pending.pop()
            source = pool.inputs[0]
            op = source.producer() if source is not None else None
            if op is None or op.domain != "" or op.op_type not in _MONOTONE:
                continue
            window = _movable(op, pool, op.version or opset)
            if isinstance(window, str):
                self.refuse(f"{label(pool, with_op=True)} kept after {label(op)}: {window}")
                continue
            dims = pc.counted_dims(op.inputs[0])
            channels = _channels(op.inputs[0])
            pending.append(pc.move_pool_ahead(model.graph, op, pool, names))  # may move on
            self._report(op, pool, window, dims, channels)
            modified = True
        return ir.passes.PassResult(model, modified)

    def _report(
        self,
        op: ir.Node,
        pool: ir.Node,
        window: pc.PoolWindow,
        dims: tuple[int, ...] | None,
        channels: int | None,
    ) -> None:
        moved = f"{label(pool)} moved ahead of {label(op, with_op=True)}"
        if dims is None:
            self.note(f"{moved}: it runs on the pooled positions only")
            return
        before, after = math.prod(dims), math.prod(window.output_dims(dims))
        text = f"{moved}: {before} → {after} positions"
        if op.op_type == "BatchNormalization" and channels is not None:
            saved = channels * (before - after)
            self.macs_saved += saved
            text += f", {saved:,} multiply-adds saved per image"
        self.note(text)


def _channels(value: ir.Value | None) -> int | None:
    shape = shapes.static_shape(value)
    return None if shape is None or len(shape) < 2 else shape[1]


def _always(op: ir.Node, version: int) -> str | None:
    return None  # Case 1: Relu, Clip.


def _leaky_relu(op: ir.Node, version: int) -> str | None:
    alpha = op.attributes.get_float("alpha", 0.01)  # Case 1
    return None if alpha >= 0 else f"LeakyRelu with alpha {alpha} < 0 is not monotone"


def _batch_norm(op: ir.Node, version: int) -> str | None:
    # Case 2: every per-channel scale γ/√(σ²+ε) > 0.
    bn = read_batch_norm(op, version)
    if isinstance(bn, str):
        return bn
    bad = int((~(bn.scale > 0)).sum())
    return f"{bad} channel(s) have a non-positive scale γ/σ" if bad else None


_MONOTONE = {
    "Relu": _always,
    "LeakyRelu": _leaky_relu,
    "Clip": _always,
    "BatchNormalization": _batch_norm,
}


def _movable(op: ir.Node, pool: ir.Node, version: int) -> pc.PoolWindow | str:
    """The pool's window, or why the pool stays after `op`."""
    window = pc.read_window(pool)
    if isinstance(window, str):
        return window
    return _MONOTONE[op.op_type](op, version) or _unsound(op, pool, window) or window


def _unsound(op: ir.Node, pool: ir.Node, window: pc.PoolWindow) -> str | None:
    """Why moving `pool` ahead of `op` would change the result or save nothing."""
    problem = sole_reader_problem(op.outputs[0], pool)
    if problem is not None:
        return problem
    if pc.uses_indices(pool):
        return "its Indices output is used"
    if not window.every_window_reads_input():
        return "a window lies wholly in the padding"
    dims = pc.counted_dims(op.inputs[0])
    if dims is not None and len(dims) != window.rank:
        return "the pool's rank differs from its input's"
    if not window.reduces_positions(dims):
        return "the pool keeps every position (nothing to save)"
    return None

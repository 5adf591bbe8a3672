"""Move a max pool ahead of the per-channel non-decreasing map that feeds it."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer import shapes
from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.passes import pool_common as pc


class MaxPoolAheadPass(OptimizerPass):
    """Rewrite x → g → MaxPool as x → MaxPool → g, for g non-decreasing per
    channel, so g runs on the pool's output positions only.

    For g non-decreasing, max_{p∈W} g(x_p) = g(max_{p∈W} x_p): the largest
    x_p is mapped to the largest g(x_p). MaxPool pads with −∞, which never
    wins a window that holds an input element, so padding is harmless as long
    as no window lies wholly in the padding.

    1. Relu, LeakyRelu with alpha ≥ 0, Clip (any bounds): non-decreasing.
    2. BatchNormalization, g(x) = γ·(x−μ)/√(σ²+ε) + β per channel: non-decreasing
       when every scale γ/√(σ²+ε) is positive; γ and σ² must be constants.

    Preconditions: g's output is read only by the pool and is not a graph
    output; the pool's Indices output is unused (ties under a flat g move
    the argmax); no window lies wholly in the padding; the pool outputs fewer
    positions than it reads (else nothing is saved). Repeats until no pool
    moves, so BN → Relu → MaxPool becomes MaxPool → BN → Relu.

    Behind a flag: after a conv, Conv → Relu → MaxPool becomes
    Conv → MaxPool → Relu, which onnxruntime can no longer fuse into one
    Conv+Relu kernel (see the benchmark).
    """

    name = "maxpool-ahead"
    flag = "maxpool-ahead"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        pending = [n for n in model.graph if n.op_type == "MaxPool" and n.domain == ""]
        while pending:
            pool = pending.pop()
            op = pool.inputs[0].producer()
            if op is None or op.domain != "" or op.op_type not in _MONOTONE:
                continue
            moved = self._try_move(model.graph, op, pool)
            if moved is not None:
                pending.append(moved)  # it may move further up
                modified = True
        return ir.passes.PassResult(model, modified)

    def _try_move(self, graph: ir.Graph, op: ir.Node, pool: ir.Node) -> ir.Node | None:
        """Move `pool` ahead of `op`; the moved pool, or None when refused."""
        label = f"{pc.node_label(pool)} ahead of {pc.node_label(op)}"
        window = pc.read_window(pool)
        why = window if isinstance(window, str) else _MONOTONE[op.op_type](op)
        why = why or _unsound(op, pool, window)
        if why is not None:
            self.refuse(f"kept {label}: {why}")
            return None
        dims = pc.counted_dims(op.inputs[0])
        channels = _channels(op.inputs[0])
        moved = pc.move_pool_ahead(graph, op, pool)
        if dims is None:
            self.note(f"moved {label}: {op.op_type} now runs on the pooled positions")
            return moved
        before, after = math.prod(dims), math.prod(window.output_dims(dims))
        text = f"moved {label}: {op.op_type} now runs on {after} instead of {before} positions"
        if op.op_type == "BatchNormalization" and channels is not None:
            saved = channels * (before - after)
            self.macs_saved += saved
            text += f", saving {saved:,} multiply-adds at batch 1"
        self.note(text)
        return moved


def _channels(value: ir.Value) -> int | None:
    shape = shapes.static_shape(value)
    return None if shape is None or len(shape) < 2 else shape[1]


def _relu(op: ir.Node) -> str | None:
    return None  # Case 1


def _leaky_relu(op: ir.Node) -> str | None:
    alpha = op.attributes.get_float("alpha", 0.01)
    return None if alpha >= 0 else f"LeakyRelu alpha {alpha} < 0 is not monotone"  # Case 1


def _batch_norm(op: ir.Node) -> str | None:
    # Case 2: every per-channel scale γ/√(σ²+ε) > 0.
    if op.attributes.get_int("training_mode", 0) or any(
        out.uses() or out.is_graph_output() for out in op.outputs[1:]
    ):
        return "BatchNormalization in training mode"
    gamma, var = pc.const_array(op.inputs[1]), pc.const_array(op.inputs[4])
    if gamma is None or var is None:
        return "BatchNormalization scale or variance is not a constant"
    eps = op.attributes.get_float("epsilon", 1e-5)
    scale = gamma / np.sqrt(var.astype(np.float64) + eps)
    if not np.all(scale > 0):
        bad = int(np.sum(~(scale > 0)))
        return f"BatchNormalization has {bad} channel(s) with a non-positive scale"
    return None


_MONOTONE = {
    "Relu": _relu,
    "LeakyRelu": _leaky_relu,
    "Clip": _relu,
    "BatchNormalization": _batch_norm,
}


def _unsound(op: ir.Node, pool: ir.Node, window: pc.PoolWindow) -> str | None:
    """Why moving `pool` ahead of `op` would change the result or save nothing."""
    consumer = pc.sole_consumer(op.outputs[0])
    if isinstance(consumer, str):
        return consumer
    if pc.uses_indices(pool):
        return "the MaxPool Indices output is used"
    if not window.every_window_reads_input():
        return "a window lies wholly in the padding"
    dims = pc.counted_dims(op.inputs[0])
    if dims is not None and len(dims) != window.rank:
        return "pool rank differs from the input's"
    if not window.reduces_positions(dims):
        return "the pool keeps every position (nothing to save)"
    return None

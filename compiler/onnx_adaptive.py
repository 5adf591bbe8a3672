"""Adaptive pooling and spatial pyramid pooling in ONNX, which has neither.

PyTorch's adaptive pool splits an axis of size S into n bins
[floor(i·S/n), ceil((i+1)·S/n)). When n divides S every bin has S/n
elements and a plain pool with kernel = stride = S/n is exact. Otherwise we
emit the bins: one Slice + ReduceMax/ReduceMean each, concatenated. With an
open size the bin bounds are computed in the graph from Shape(x):

    start_i = (i·S) div n,  end_i = ((i+1)·S + n - 1) div n
"""

from __future__ import annotations

import numpy as np

from netc.compiler.ir import Node


def _static(size) -> bool:
    return isinstance(size, int)


def _bounds(b, name: str, x: str, axis: int, size, bins: int) -> tuple[list, list]:
    """Per-bin start and end (ints, or 1-element int64 tensors when the size is open)."""
    if _static(size):
        starts = [(i * size) // bins for i in range(bins)]
        ends = [-((-(i + 1) * size) // bins) for i in range(bins)]
        return starts, ends
    dim = b.step("Shape", [x], f"{name}.size{axis}", start=axis, end=axis + 1)
    index = b.const(f"{name}.index", np.arange(bins))
    count = b.const(f"{name}.bins", [bins])
    scaled = b.step("Mul", [index, dim], f"{name}.i_s")
    start_all = b.step("Div", [scaled, count], f"{name}.starts")
    upper = b.step("Add", [scaled, dim], f"{name}.i1_s")
    upper = b.step("Add", [upper, b.const(f"{name}.round", [bins - 1])], f"{name}.i1_s_r")
    end_all = b.step("Div", [upper, count], f"{name}.ends")
    pick = []
    for i in range(bins):
        where = b.const(f"{name}.at", [i])
        pick.append(
            (
                b.step("Gather", [start_all, where], f"{name}.s"),
                b.step("Gather", [end_all, where], f"{name}.e"),
            )
        )
    return [p[0] for p in pick], [p[1] for p in pick]


def _pair(b, name: str, h, w) -> str:
    if isinstance(h, int) and isinstance(w, int):
        return b.const(name, [h, w])
    parts = [v if isinstance(v, str) else b.const(name, [v]) for v in (h, w)]
    return b.step("Concat", parts, name, axis=0)


def _binned(b, name: str, x: str, shape, out: tuple[int, int], mode: str, result: str) -> str:
    """Adaptive pool of x (N, C, H, W) to out=(oh, ow), as explicit bins."""
    h_starts, h_ends = _bounds(b, name, x, 2, shape[2], out[0])
    w_starts, w_ends = _bounds(b, name, x, 3, shape[3], out[1])
    axes = b.const(f"{name}.axes", [2, 3])
    reduce = "ReduceMax" if mode == "max" else "ReduceMean"
    rows = []
    for i in range(out[0]):
        cells = []
        for j in range(out[1]):
            starts = _pair(b, f"{name}.starts", h_starts[i], w_starts[j])
            ends = _pair(b, f"{name}.ends", h_ends[i], w_ends[j])
            window = b.step("Slice", [x, starts, ends, axes], f"{name}.bin")
            cells.append(b.step(reduce, [window], f"{name}.cell", axes=[2, 3], keepdims=1))
        rows.append(cells[0] if len(cells) == 1 else b.step("Concat", cells, f"{name}.row", axis=3))
    if len(rows) == 1:
        return b.add("Identity", rows, result, b.fresh(f"{name}/identity"))
    return b.add("Concat", rows, result, b.fresh(f"{name}/concat"), axis=2)


def _adaptive(
    b, name: str, x: str, shape, out: tuple[int, int], mode: str, result: str, node_name: str
) -> str:
    if out == (1, 1):
        op = "GlobalMaxPool" if mode == "max" else "GlobalAveragePool"
        return b.add(op, [x], result, node_name)
    size_h, size_w = shape[2], shape[3]
    if _static(size_h) and _static(size_w) and size_h % out[0] == 0 and size_w % out[1] == 0:
        kernel = [size_h // out[0], size_w // out[1]]
        op = "MaxPool" if mode == "max" else "AveragePool"
        return b.add(op, [x], result, node_name, kernel_shape=kernel, strides=kernel)
    return _binned(b, name, x, shape, out, mode, result)


def emit_adaptive(b, node: Node, ins: list[str], out: str, shapes) -> None:
    mode = "max" if node.op == "adaptive_max_pool" else "avg"
    _adaptive(b, node.name, ins[0], shapes[0], tuple(node.attrs["output"]), mode, out, node.name)


def emit_spp(b, node: Node, ins: list[str], out: str, shapes) -> None:
    """Each level: adaptive pool to l×l, Flatten (channel-major), then Concat in order."""
    flat = []
    for level in node.attrs["levels"]:
        base = f"{node.name}.level{level}"
        pooled = _adaptive(
            b,
            base,
            ins[0],
            shapes[0],
            (level, level),
            node.attrs["mode"],
            b.fresh(base),
            b.fresh(f"{base}/pool"),
        )
        flat.append(b.step("Flatten", [pooled], f"{base}.flat", axis=1))
    b.add("Concat", flat, out, node.name, axis=1)

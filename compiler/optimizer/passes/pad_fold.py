"""Fold an explicit Pad into the padding of the Conv or pool that reads it."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from netc.compiler.optimizer.base import OptimizerPass
from netc.compiler.optimizer.rewrite import constant, label, pair_label, sole_reader_problem

_READERS = ("Conv", "ConvTranspose", "AveragePool", "MaxPool")


class PadFolding(OptimizerPass):
    """Pad(x) → Conv/pool becomes the Conv/pool with larger pads.

    A Conv, AveragePool or MaxPool with pads p reads x padded by p with a
    fill value: 0 for Conv and for AveragePool with count_include_pad=1 (the
    padded zeros are counted), −∞ in effect for MaxPool (padding never wins).
    An explicit Pad(x, q, v) in front of it is the same padding when:
    1. Conv: mode constant, v = 0;
    2. AveragePool: mode constant, v = 0, count_include_pad = 1 (with 0
       the divisor would stop counting the Pad's zeros);
    3. MaxPool: mode constant, v = −∞.
    Then pads' = p + q on the spatial axes. Refused, with the reason: q not
    constant, negative (a crop) or non-zero on the batch or channel axis; a
    Pad with an axes input; the reader's auto_pad set to SAME_*; a fill value
    or mode other than the above; the Pad's output read by anything else
    or a graph output. ConvTranspose is not a reader here: its pads crop.
    """

    name = "pad_folding"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        modified = False
        for pad in [n for n in graph if n.op_type == "Pad" and n.domain in ("", "ai.onnx")]:
            out = pad.outputs[0]
            readers = [
                n
                for n in out.consumers()
                if n.op_type in _READERS and n.domain in ("", "ai.onnx") and n.inputs[0] is out
            ]
            if not readers:
                continue
            reader = readers[0]
            what = f"{label(pad, with_op=True)} before {label(reader, with_op=True)}"
            problem = sole_reader_problem(out, reader) or _problem(pad, reader, opset)
            if problem is not None:
                self.refuse(f"{what} not folded: {problem}")
                continue
            pads = _pads(pad, opset)
            assert not isinstance(pads, str)  # _problem has read them
            rank = len(pads) // 2
            spatial = rank - 2
            old = list(reader.attributes.get_ints("pads", [0] * (2 * spatial)))
            new = [
                old[i] + pads[2 + i] if i < spatial else old[i] + pads[rank + 2 + i - spatial]
                for i in range(2 * spatial)
            ]
            reader.attributes["pads"] = ir.AttrInt64s("pads", new)
            if "auto_pad" in reader.attributes:
                reader.attributes["auto_pad"] = ir.AttrString("auto_pad", "NOTSET")
            source = pad.inputs[0]
            assert source is not None
            reader.replace_input_with(0, source)
            graph.remove(pad, safe=True)
            self.note(f"{pair_label(pad, reader)} → {reader.op_type} with pads {new}")
            modified = True
        return ir.passes.PassResult(model, modified)


def _pads(pad: ir.Node, opset: int) -> list[int] | str:
    if opset < 11:
        attr = pad.attributes.get_ints("pads")
        return "it has no pads" if attr is None else list(attr)
    if len(pad.inputs) < 2 or pad.inputs[1] is None:
        return "it has no pads"
    data = constant(pad.inputs[1])
    if isinstance(data, str):
        return f"its pads are not a constant: {data}"
    return [int(v) for v in np.asarray(data).reshape(-1)]


def _fill(pad: ir.Node, opset: int) -> float | str:
    if opset < 11:
        return pad.attributes.get_float("value", 0.0)
    if len(pad.inputs) < 3 or pad.inputs[2] is None:
        return 0.0
    data = constant(pad.inputs[2])
    if isinstance(data, str):
        return f"its fill value is not a constant: {data}"
    return float(np.asarray(data).reshape(-1)[0]) if data.size else 0.0


def _problem(pad: ir.Node, reader: ir.Node, opset: int) -> str | None:
    """Why the Pad is not the reader's own kind of padding (cases 1-3), or None."""
    mode = pad.attributes.get_string("mode", "constant")
    if mode != "constant":
        return f"mode {mode!r} does not pad with a constant"
    if len(pad.inputs) > 3 and pad.inputs[3] is not None:
        return "it pads selected axes (an axes input)"
    pads = _pads(pad, opset)
    if isinstance(pads, str):
        return pads
    rank = len(pads) // 2
    if rank < 3:
        return f"it pads a rank-{rank} tensor"
    if any(p < 0 for p in pads):
        return "a negative pad crops"
    if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return "it pads the batch or channel axis"
    auto_pad = reader.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return f"the {reader.op_type} has auto_pad={auto_pad}"
    fill = _fill(pad, opset)
    if isinstance(fill, str):
        return fill
    if reader.op_type == "MaxPool":
        if not (math.isinf(fill) and fill < 0):
            return f"it fills with {fill:g}, which a MaxPool's own padding (−∞) would not"
        if len(reader.outputs) > 1 and reader.outputs[1].uses():
            return "the MaxPool's indices output is used (it counts padded positions)"
        return None
    if fill != 0:
        return f"it fills with {fill:g}, not 0"
    if reader.op_type == "AveragePool" and reader.attributes.get_int("count_include_pad", 0) != 1:
        return "the AveragePool does not count padded zeros (count_include_pad=0)"
    if reader.op_type == "ConvTranspose":
        return "a ConvTranspose's pads crop its output instead of padding its input"
    return None

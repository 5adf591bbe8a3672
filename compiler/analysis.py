"""Per-layer and total statistics of a graph.

- params: learned parameters (trainable and frozen); BN running statistics
  are buffers and not counted, as in torchvision's `num_params`.
- macs: multiply-accumulates of conv, conv_transpose and fc layers for one
  sample (torchvision's "GFLOPS" column counts exactly these).
- activation memory: fp32 bytes of each layer's output for one sample.
- receptive field: size, effective stride (jump) and the offset of output
  position 0's centre in the input.

MACs and memory need static sizes; with open H/W they are None until the
input size is fixed (`--input-shape`).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from netc.compiler import receptive_field as rfield
from netc.compiler import symbolic as sym
from netc.compiler.ir import Graph, Shape
from netc.compiler.ops import OPS

BYTES_PER_ELEMENT = 4


@dataclass(frozen=True)
class LayerStats:
    name: str
    op: str
    inputs: tuple[str, ...]
    shape: Shape
    params: int
    trainable_params: int
    macs: int | None
    activation_bytes: int | None
    field: rfield.Field

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "op": self.op,
            "inputs": list(self.inputs),
            "shape": [d if isinstance(d, int) else str(d) for d in self.shape],
            "params": self.params,
            "trainable_params": self.trainable_params,
            "macs": self.macs,
            "activation_bytes": self.activation_bytes,
            "receptive_field": field_json(self.field),
        }


@dataclass(frozen=True)
class Analysis:
    layers: list[LayerStats]
    params: int
    trainable_params: int
    macs: int | None
    activation_bytes: int | None
    outputs: dict[str, LayerStats]


def field_json(field: rfield.Field) -> dict:
    def num(value: Fraction) -> int | float | None:
        if value.denominator == 1:
            return int(value)
        try:
            return float(value)
        except OverflowError:  # strides that multiply past a float's range: no JSON number
            return None

    return {
        "size": None if field.whole else [num(a.size) for a in field.axes()],
        "stride": [num(a.jump) for a in field.axes()],
        "offset": [num(a.start) for a in field.axes()],
        "whole_input": field.whole,
    }


def _count(shapes: dict[str, tuple[int, ...]]) -> int:
    total = 0
    for shape in shapes.values():
        size = 1
        for d in shape:
            size *= d
        total += size
    return total


def _static(shape: Shape) -> bool:
    return all(sym.is_static(d) for d in shape[1:])


def analyze(graph: Graph) -> Analysis:
    shapes = {name: item.shape for name, item in graph.inputs.items()}
    fields = {name: rfield.for_input(item.shape) for name, item in graph.inputs.items()}
    layers = []
    for node in graph.nodes:
        op = OPS[node.op]
        in_shapes = [shapes[s] for s in node.inputs]
        params = _count(op.params(node.attrs, in_shapes))
        static = _static(node.shape) and all(_static(s) for s in in_shapes)
        macs = op.macs(node.attrs, in_shapes, node.shape) if static else None
        elements = 1
        for d in node.shape[1:]:
            elements *= d if isinstance(d, int) else 0
        fields[node.name] = rfield.for_node(node, [fields[s] for s in node.inputs], in_shapes)
        shapes[node.name] = node.shape
        layers.append(
            LayerStats(
                name=node.name,
                op=node.op,
                inputs=node.inputs,
                shape=node.shape,
                params=params,
                trainable_params=params if node.trainable else 0,
                macs=macs,
                activation_bytes=elements * BYTES_PER_ELEMENT if _static(node.shape) else None,
                field=fields[node.name],
            )
        )
    by_name = {layer.name: layer for layer in layers}
    return Analysis(
        layers=layers,
        params=sum(layer.params for layer in layers),
        trainable_params=sum(layer.trainable_params for layer in layers),
        macs=_total([layer.macs for layer in layers]),
        activation_bytes=_total([layer.activation_bytes for layer in layers]),
        outputs={out: by_name[source] for out, source in graph.outputs.items()},
    )


def _total(counts: list[int | None]) -> int | None:
    """The sum, or None when any count is unknown."""
    known = [count for count in counts if count is not None]
    return sum(known) if len(known) == len(counts) else None


def minimum_input_size(graph: Graph, limit: int = 4096) -> tuple[int, int] | None:
    """The smallest open (H, W) for which every layer has a non-empty output.

    None when the input size is fixed. Each axis is searched with the other
    one large, since ConvNet size rules act on H and W independently.
    """
    item = next(iter(graph.inputs.values()))
    if all(sym.is_static(d) for d in item.shape[2:]):
        return None
    # every open size of every input (a second input may name its own)
    names = {str(d) for spec in graph.inputs.values() for d in spec.shape[1:]}
    names = {name for name in names if not name.lstrip("-").isdigit()}
    dims = [d for node in graph.nodes for d in node.shape[1:]]

    def valid(env: dict[str, int]) -> bool:
        return all(sym.evaluate(d, env) >= 1 for d in dims)

    result = []
    for axis in item.shape[2:]:
        if sym.is_static(axis):
            result.append(axis)
            continue
        other = {name: limit for name in names}
        if not valid({**other, str(axis): limit}):
            return None
        # sizes are floor((a·x + b)/d) with a >= 0: valid for x is valid for every larger x,
        # so the smallest valid size is found by bisection, not by trying each
        low, high = 1, limit
        while low < high:
            middle = (low + high) // 2
            if valid({**other, str(axis): middle}):
                high = middle
            else:
                low = middle + 1
        result.append(low)
    return (result[0], result[1])

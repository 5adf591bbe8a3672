"""Receptive fields against a measurement: which input pixels reach one output pixel.

The stack runs in torch with every weight 1 and no bias, and average pooling in place
of max pooling: then every path from an input pixel to an output pixel has a positive
weight, so the gradient of output (i, j) is nonzero exactly on the pixels that reach it
(a max pool reads the same window, but its gradient reaches only the argmax). Output
(i, j) is taken away from the borders, where padding does not clip the field. Along each
axis the nonzero rows span `size` pixels centred on `start + i·jump`.
"""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import netc

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def pairs(low: int, high: int):
    values = st.integers(low, high)
    return st.one_of(values, st.lists(values, min_size=2, max_size=2))


@st.composite
def convs(draw):
    layer = {
        "op": "conv",
        "channels": 1,
        "kernel": draw(pairs(1, 5)),
        "stride": draw(pairs(1, 3)),
        "dilation": draw(pairs(1, 2)),
        "bias": False,
    }
    same = _pair(layer["stride"]) == (1, 1) and draw(st.booleans())
    layer["padding"] = "same" if same else draw(st.one_of(pairs(0, 3), st.just("valid")))
    return layer


@st.composite
def pools(draw):
    layer = {
        "op": draw(st.sampled_from(["max_pool", "avg_pool"])),
        "kernel": draw(pairs(1, 4)),
        "ceil_mode": draw(st.booleans()),
    }
    if draw(st.booleans()):
        layer["stride"] = draw(pairs(1, 3))
    kh, kw = _pair(layer["kernel"])
    layer["padding"] = [draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))]
    return layer


@st.composite
def transposes(draw):
    return {
        "op": "conv_transpose",
        "channels": 1,
        "kernel": draw(pairs(1, 5)),
        "stride": draw(pairs(1, 3)),
        "padding": draw(pairs(0, 2)),
        "dilation": draw(pairs(1, 2)),
        "bias": False,
    }


def _run(layer: dict, x: torch.Tensor) -> torch.Tensor:
    """One layer with all-ones weights; pools average (see the module docstring)."""
    kernel = _pair(layer["kernel"])
    if layer["op"] == "conv":
        padding = layer["padding"]
        padding = padding if isinstance(padding, str) else _pair(padding)
        return F.conv2d(
            x,
            x.new_ones(1, 1, *kernel),
            None,
            _pair(layer["stride"]),
            padding,
            _pair(layer["dilation"]),
        )
    if layer["op"] == "conv_transpose":
        return F.conv_transpose2d(
            x,
            x.new_ones(1, 1, *kernel),
            None,
            _pair(layer["stride"]),
            _pair(layer["padding"]),
            0,
            1,
            _pair(layer["dilation"]),
        )
    stride = _pair(layer["stride"]) if "stride" in layer else kernel
    return F.avg_pool2d(x, kernel, stride, _pair(layer["padding"]), layer["ceil_mode"])


def _extent_bound(layers: list[dict], axis: int) -> tuple[int, int]:
    """A generous bound on the field's size and the total stride (the textbook sums)."""
    size, jump = 1, 1
    for layer in layers:
        k, d = _pair(layer["kernel"])[axis], _pair(layer.get("dilation", 1))[axis]
        s = _pair(layer.get("stride", layer["kernel"]))[axis]
        size += d * (k - 1) * jump
        jump *= s
    return size, jump


def _compile(layers: list[dict], height: int, width: int) -> netc.Network:
    named = [{"name": f"l{i}", **layer} for i, layer in enumerate(layers)]
    return netc.load_string(
        json.dumps({"name": "rf", "inputs": {"x": [1, height, width]}, "layers": named})
    )


def _measure(layers: list[dict], height: int, width: int, positions):
    """Per output position, the (low, high) input rows and columns whose gradient is nonzero."""
    x = torch.ones(1, 1, height, width, dtype=torch.float64, requires_grad=True)
    y = x
    for layer in layers:
        y = _run(layer, y)
    spans = []
    for i, j in positions:
        (grad,) = torch.autograd.grad(y[0, 0, i, j], x, retain_graph=True)
        assert (grad >= 0).all()
        rows = torch.nonzero(grad[0, 0].sum(1)).flatten().tolist()
        cols = torch.nonzero(grad[0, 0].sum(0)).flatten().tolist()
        spans.append(((rows[0], rows[-1]), (cols[0], cols[-1])) if rows else None)
    return tuple(y.shape[2:]), spans


def _input_size(layers: list[dict], axis: int) -> int:
    size, jump = _extent_bound(layers, axis)
    return 2 * size + 6 * jump + 8


@SETTINGS
@given(layers=st.lists(st.one_of(convs(), pools()), min_size=1, max_size=4))
def test_field_of_conv_and_pool_stacks_is_exact(layers):
    height, width = _input_size(layers, 0), _input_size(layers, 1)
    net = _compile(layers, height, width)
    field = net.analysis.layers[-1].field
    out_h, out_w = net.graph.nodes[-1].shape[2:]
    i, j = out_h // 2, out_w // 2
    shape, spans = _measure(layers, height, width, [(i, j), (i + 1, j + 1)])
    assert shape == (out_h, out_w)
    assert not field.whole
    for axis, (f, extent, index) in enumerate(zip(field.axes(), (height, width), (i, j))):
        (low, high), (next_low, next_high) = spans[0][axis], spans[1][axis]
        assert 0 < low and high < extent - 1, "the field touches the border: enlarge the input"
        assert high - low + 1 == f.size
        assert Fraction(low + high, 2) == f.start + index * f.jump
        assert next_low - low == next_high - high == f.jump


@SETTINGS
@given(layers=st.lists(st.one_of(convs(), pools(), transposes()), min_size=1, max_size=3))
def test_field_through_transposed_convs_bounds_the_measurement(layers):
    """A transposed conv of stride s reaches (k-1)·d/s inputs on average; its field is the
    continuous interval, which holds every pixel reached and is exact at stride 1."""
    height = max(_input_size(layers, 0), 24)
    width = max(_input_size(layers, 1), 24)
    net = _compile(layers, height, width)
    field = net.analysis.layers[-1].field
    out_h, out_w = net.graph.nodes[-1].shape[2:]
    positions = [(out_h // 2 + k, out_w // 2 + k) for k in range(3)]
    shape, spans = _measure(layers, height, width, positions)
    assert shape == (out_h, out_w)
    exact = [
        all(
            _pair(layer.get("stride", layer["kernel"]))[axis] == 1
            for layer in layers
            if layer["op"] == "conv_transpose"
        )
        for axis in range(2)
    ]
    for (i, j), span in zip(positions, spans):
        if span is None:  # a stride larger than the kernel leaves outputs nothing reaches
            continue
        for axis, (f, index) in enumerate(zip(field.axes(), (i, j))):
            low, high = span[axis]
            centre, half = f.start + index * f.jump, (f.size - 1) / 2
            assert centre - half <= low and high <= centre + half
            if exact[axis]:
                assert high - low + 1 == f.size
                assert Fraction(low + high, 2) == centre


@SETTINGS
@given(first=convs(), second=convs())
def test_add_takes_the_union_of_its_inputs_fields(first, second):
    """Two stride-1 'same' convs keep the shape, so they add whatever their kernels."""
    branches = [{**layer, "stride": 1, "padding": "same"} for layer in (first, second)]
    layers = [{"name": f"b{k}", "inputs": "x", **layer} for k, layer in enumerate(branches)]
    layers.append({"name": "sum", "op": "add", "inputs": ["b0", "b1"]})
    net = netc.load_string(
        json.dumps({"name": "rf", "inputs": {"x": [1, 32, 32]}, "layers": layers})
    )
    field = net.analysis.layers[-1].field
    x = torch.ones(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    y = _run(branches[0], x) + _run(branches[1], x)
    (grad,) = torch.autograd.grad(y[0, 0, 16, 16], x)
    for axis, f in enumerate(field.axes()):
        hit = torch.nonzero(grad[0, 0].sum(1 - axis)).flatten().tolist()
        assert hit[-1] - hit[0] + 1 == f.size
        assert Fraction(hit[0] + hit[-1], 2) == f.start + 16 * f.jump


def test_global_pools_see_the_whole_input():
    layers = [
        {"name": "c", "op": "conv", "channels": 2, "kernel": 3},
        {"name": "g", "op": "global_avg_pool"},
        {"name": "f", "op": "flatten"},
        {"name": "fc", "op": "fc", "units": 3},
    ]
    net = netc.load_string(
        json.dumps({"name": "rf", "inputs": {"x": [1, None, None]}, "layers": layers})
    )
    by_name = {layer.name: layer.field for layer in net.analysis.layers}
    assert not by_name["c"].whole
    assert by_name["g"].whole and by_name["fc"].whole


def test_fcn_crop_offsets():
    """The offsets of Caffe's voc-fcn crop layers."""
    offsets = {
        "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
        "fcn32s": {"score": 19},
    }
    for name, crops in offsets.items():
        graph = netc.load(name).graph
        for layer, offset in crops.items():
            assert graph.node(layer).attrs["offset"] == (offset, offset), f"{name}.{layer}"
        assert [str(d) for d in graph.node("score").shape[2:]] == ["H", "W"]


def test_fcn8s_score_is_centred_on_its_pixel():
    """After the last crop, output pixel x is centred on input pixel x at stride 1."""
    net = netc.load("fcn8s", input_shape=(3, 500, 500))
    field = {layer.name: layer.field for layer in net.analysis.layers}["score"]
    for axis in field.axes():
        assert (axis.start, axis.jump) == (0, 1)

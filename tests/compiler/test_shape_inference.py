"""Shape inference against PyTorch as the oracle, on random layers, stacks and open sizes.

Each example builds a small description, compiles it and runs the same layers with
torch.nn.functional on a random tensor. Where torch computes a shape, netc must infer
the same one; where torch refuses, netc must refuse with a SpecError. A few rules of the
language are stricter than torch on purpose; `_oracle` raises `Refused` for those, each
with its reason.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

import netc
from netc.compiler import symbolic as sym
from netc.errors import SpecError

SETTINGS = settings(derandomize=True, max_examples=150, deadline=None)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
TORCH_ERRORS = (RuntimeError, ValueError, IndexError)


class Refused(Exception):
    """The oracle's input is one the language rejects although torch might not."""


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


# --- the oracle ------------------------------------------------------------------------------


def _conv(layer, x):
    groups = layer.get("groups", 1)
    kh, kw = _pair(layer["kernel"])
    weight = torch.randn(layer["channels"], x.shape[1] // groups, kh, kw)
    bias = torch.randn(layer["channels"]) if layer.get("bias", True) else None
    padding = layer.get("padding", 0)
    padding = padding if isinstance(padding, str) else _pair(padding)
    return F.conv2d(
        x,
        weight,
        bias,
        _pair(layer.get("stride", 1)),
        padding,
        _pair(layer.get("dilation", 1)),
        groups,
    )


def _conv_transpose(layer, x):
    groups = layer.get("groups", 1)
    if layer["channels"] % groups:
        raise Refused("torch's weight layout cannot express output channels % groups != 0")
    kh, kw = _pair(layer["kernel"])
    weight = torch.randn(x.shape[1], layer["channels"] // groups, kh, kw)
    bias = torch.randn(layer["channels"]) if layer.get("bias", True) else None
    return F.conv_transpose2d(
        x,
        weight,
        bias,
        _pair(layer.get("stride", 1)),
        _pair(layer.get("padding", 0)),
        _pair(layer.get("output_padding", 0)),
        groups,
        _pair(layer.get("dilation", 1)),
    )


def _pool(layer, x):
    kernel = _pair(layer["kernel"])
    stride = _pair(layer["stride"]) if layer.get("stride") is not None else kernel
    args = (x, kernel, stride, _pair(layer.get("padding", 0)))
    if layer["op"] == "max_pool":
        return F.max_pool2d(*args, ceil_mode=layer.get("ceil_mode", False))
    return F.avg_pool2d(
        *args,
        ceil_mode=layer.get("ceil_mode", False),
        count_include_pad=layer.get("count_include_pad", True),
    )


def _spp(layer, x):
    pool = F.adaptive_max_pool2d if layer.get("mode", "max") == "max" else F.adaptive_avg_pool2d
    return torch.cat([pool(x, level).flatten(1) for level in layer["levels"]], 1)


def _upsample(layer, x):
    mode = layer.get("mode", "nearest")
    scale = layer.get("scale")
    return F.interpolate(
        x,
        size=_pair(layer["size"]) if "size" in layer else None,
        scale_factor=tuple(float(s) for s in _pair(scale)) if scale is not None else None,
        mode=mode,
        align_corners=layer.get("align_corners", False) if mode == "bilinear" else None,
    )


def _fc(layer, x):
    if x.dim() != 2:
        raise Refused("fc takes a vector; F.linear would broadcast over H and W")
    return F.linear(
        x,
        torch.randn(layer["units"], x.shape[1]),
        torch.randn(layer["units"]) if layer.get("bias", True) else None,
    )


def _concat(layer, xs):
    axis = layer.get("axis", 1)
    if -4 <= axis < 4 and axis % 4 == 0:
        raise Refused("concat along the batch axis")
    return torch.cat(xs, axis)


def _add(layer, xs):
    if any(x.shape != xs[0].shape for x in xs):
        raise Refused("add does not broadcast")
    return sum(xs[1:], xs[0])


def _crop(layer, xs):
    x, ref = xs
    (oh, ow), (h, w) = _pair(layer["offset"]), ref.shape[2:]
    if oh + h > x.shape[2] or ow + w > x.shape[3]:
        raise Refused("a slice past the end would silently shrink")
    return x[:, :, oh : oh + h, ow : ow + w]


UNARY = {
    "conv": _conv,
    "conv_transpose": _conv_transpose,
    "max_pool": _pool,
    "avg_pool": _pool,
    "global_avg_pool": lambda layer, x: F.adaptive_avg_pool2d(x, 1),
    "global_max_pool": lambda layer, x: F.adaptive_max_pool2d(x, 1),
    "adaptive_avg_pool": lambda layer, x: F.adaptive_avg_pool2d(x, _pair(layer["output"])),
    "adaptive_max_pool": lambda layer, x: F.adaptive_max_pool2d(x, _pair(layer["output"])),
    "spp": _spp,
    "upsample": _upsample,
    "flatten": lambda layer, x: x.flatten(1),
    "fc": _fc,
    "relu": lambda layer, x: F.relu(x),
}
MERGE = {"concat": _concat, "add": _add, "crop": _crop}


def _oracle(inputs: dict[str, tuple[int, ...]], layers: list[dict]) -> dict[str, tuple] | None:
    """Each layer's output shape (without the batch) by running torch; None if it refuses."""
    values = {name: torch.randn(1, *shape) for name, shape in inputs.items()}
    previous = next(iter(inputs))
    try:
        for layer in layers:
            sources = layer.get("inputs", previous)
            sources = [sources] if isinstance(sources, str) else sources
            xs = [values[s] for s in sources]
            if layer["op"] in MERGE:
                values[layer["name"]] = MERGE[layer["op"]](layer, xs)
            else:
                values[layer["name"]] = UNARY[layer["op"]](layer, *xs)
            previous = layer["name"]
    except (*TORCH_ERRORS, Refused):
        return None
    return {layer["name"]: tuple(values[layer["name"]].shape[1:]) for layer in layers}


# --- compiling -------------------------------------------------------------------------------


def _describe(inputs: dict[str, tuple], layers: list[dict]) -> str:
    """A description as YAML text (JSON is YAML)."""
    return json.dumps(
        {"name": "random", "inputs": {k: list(v) for k, v in inputs.items()}, "layers": layers}
    )


def _compile(inputs: dict[str, tuple], layers: list[dict]) -> netc.Network | SpecError:
    """The compiled network, or the SpecError it raised; any other exception fails the test."""
    try:
        return netc.load_string(_describe(inputs, layers))
    except SpecError as exc:
        return exc


def _check_against_torch(inputs: dict[str, tuple[int, ...]], layers: list[dict]) -> None:
    expected = _oracle(inputs, layers)
    event("refused" if expected is None else "valid")
    result = _compile(inputs, layers)
    text = _describe(inputs, layers)
    if expected is None:
        assert isinstance(result, SpecError), f"torch refuses, netc accepts:\n{text}"
        return
    assert not isinstance(result, SpecError), f"torch accepts, netc refuses:\n{text}\n{result}"
    for name, shape in expected.items():
        node = result.graph.node(name)
        assert node.shape[0] == sym.Sym.var("N")
        assert node.shape[1:] == shape, f"layer {name}:\n{text}"


# --- strategies ------------------------------------------------------------------------------

SIZES = st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40))


def pairs(low: int, high: int):
    """An int or an [h, w] list, as a description writes sizes."""
    values = st.integers(low, high)
    return st.one_of(values, st.lists(values, min_size=2, max_size=2))


def _groups(draw, channels: int) -> int:
    divisors = [g for g in (1, 2, 3, 4) if channels % g == 0]
    return draw(st.one_of(st.sampled_from(divisors), st.integers(1, 4)))


@st.composite
def conv_layers(draw, in_channels: int):
    groups = _groups(draw, in_channels)
    layer = {
        "op": "conv",
        "channels": groups * draw(st.integers(1, 3)),
        "kernel": draw(pairs(1, 6)),
    }
    if draw(st.booleans()):
        layer["stride"] = draw(pairs(1, 3))
    layer["padding"] = draw(st.one_of(pairs(0, 3), st.sampled_from(["same", "valid"])))
    if draw(st.booleans()):
        layer["dilation"] = draw(pairs(1, 3))
    layer["groups"] = groups
    layer["bias"] = draw(st.booleans())
    return layer


@st.composite
def conv_transpose_layers(draw, in_channels: int):
    groups = _groups(draw, in_channels)
    layer = {
        "op": "conv_transpose",
        "channels": groups * draw(st.integers(1, 3)),
        "kernel": draw(pairs(1, 5)),
        "stride": draw(pairs(1, 3)),
        "padding": draw(pairs(0, 3)),
        "output_padding": draw(pairs(0, 2)),
        "dilation": draw(pairs(1, 2)),
        "groups": groups,
        "bias": draw(st.booleans()),
    }
    return layer


@st.composite
def pool_layers(draw, in_channels: int = 0):
    layer = {"op": draw(st.sampled_from(["max_pool", "avg_pool"])), "kernel": draw(pairs(1, 5))}
    if draw(st.booleans()):
        layer["stride"] = draw(pairs(1, 4))
    kh, kw = _pair(layer["kernel"])
    # padding past half the kernel is an error in both; draw it now and then
    valid = st.tuples(st.integers(0, kh // 2), st.integers(0, kw // 2)).map(list)
    layer["padding"] = draw(st.one_of(valid, pairs(0, 3)))
    layer["ceil_mode"] = draw(st.booleans())
    if layer["op"] == "avg_pool" and draw(st.booleans()):
        layer["count_include_pad"] = draw(st.booleans())
    return layer


@st.composite
def upsample_layers(draw, in_channels: int = 0):
    mode = draw(st.sampled_from(["nearest", "bilinear"]))
    layer = {"op": "upsample", "mode": mode}
    if draw(st.booleans()):
        layer["scale"] = draw(pairs(1, 2))
    else:
        layer["size"] = draw(pairs(1, 40))
    if mode == "bilinear":
        layer["align_corners"] = draw(st.booleans())
    return layer


@st.composite
def whole_map_layers(draw, in_channels: int = 0):
    op = draw(
        st.sampled_from(
            ["global_avg_pool", "global_max_pool", "adaptive_avg_pool", "adaptive_max_pool"]
        )
    )
    return {"op": op, "output": draw(pairs(1, 8))} if op.startswith("adaptive") else {"op": op}


def spatial_layers(in_channels: int, *, resize: bool = True):
    """One layer that keeps a feature map: conv, conv_transpose, pool, upsample."""
    kinds = [conv_layers(in_channels), pool_layers()]
    if resize:
        kinds += [conv_transpose_layers(in_channels), upsample_layers()]
    return st.one_of(*kinds)


@st.composite
def stacks(draw, min_layers: int = 1, max_layers: int = 4, *, resize: bool = True):
    """A chain of spatial layers with its input shape (C, H, W)."""
    shape = draw(SIZES)
    channels = shape[0]
    layers = []
    for index in range(draw(st.integers(min_layers, max_layers))):
        layer = {"name": f"l{index}", **draw(spatial_layers(channels, resize=resize))}
        channels = layer.get("channels", channels)
        layers.append(layer)
    return shape, layers


# --- single layers ---------------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), shape=SIZES)
def test_conv(data, shape):
    layer = {"name": "l0", **data.draw(conv_layers(shape[0]))}
    _check_against_torch({"x": shape}, [layer])


@SETTINGS
@given(data=st.data(), shape=SIZES)
def test_conv_transpose(data, shape):
    layer = {"name": "l0", **data.draw(conv_transpose_layers(shape[0]))}
    _check_against_torch({"x": shape}, [layer])


@SETTINGS
@given(layer=pool_layers(), shape=SIZES)
def test_pool(layer, shape):
    _check_against_torch({"x": shape}, [{"name": "l0", **layer}])


@settings(derandomize=True, max_examples=60, deadline=None)
@given(layer=st.one_of(whole_map_layers(), upsample_layers()), shape=SIZES)
def test_whole_map_pools_and_upsample(layer, shape):
    _check_against_torch({"x": shape}, [{"name": "l0", **layer}])


@settings(derandomize=True, max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=SIZES,
    levels=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    mode=st.sampled_from(["max", "avg"]),
    units=st.integers(1, 10),
)
def test_spp_and_flatten_fc(data, shape, levels, mode, units):
    first = {"name": "l0", **data.draw(spatial_layers(shape[0]))}
    tail = data.draw(
        st.sampled_from(
            [
                [{"name": "l1", "op": "spp", "levels": levels, "mode": mode}],
                [{"name": "l1", "op": "flatten"}],
                [{"name": "l1", "op": "fc", "units": units}],  # not a vector: refused by both
            ]
        )
    )
    _check_against_torch({"x": shape}, [first, *tail, {"name": "out", "op": "fc", "units": units}])


@SETTINGS
@given(
    data=st.data(),
    shape=SIZES,
    merge=st.sampled_from(["concat", "add"]),
    axis=st.sampled_from([1, 1, 1, 2, 3, -1, -3, 0, 4]),
)
def test_concat_and_add(data, shape, merge, axis):
    """Two single-layer branches off one input, merged."""
    branches = [
        {"name": f"b{i}", "inputs": "x", **data.draw(spatial_layers(shape[0]))} for i in range(2)
    ]
    if data.draw(st.booleans()):  # the same layer twice: the shapes agree
        branches[1] = {**branches[0], "name": "b1"}
    merged = {"name": "m", "op": merge, "inputs": ["b0", "b1"]}
    if merge == "concat":
        merged["axis"] = axis
    _check_against_torch({"x": shape}, [*branches, merged])


@SETTINGS
@given(x=SIZES, ref=SIZES, offset=pairs(0, 8), data=st.data())
def test_crop_with_explicit_offset(x, ref, offset, data):
    reference = data.draw(st.sampled_from(["r", "pooled"]))
    layers = [
        {"name": "pooled", "op": "max_pool", "inputs": "x", "kernel": 2},
        {"name": "c", "op": "crop", "inputs": ["x", reference], "offset": offset},
    ]
    _check_against_torch({"x": x, "r": ref}, layers)


# --- stacks ----------------------------------------------------------------------------------


@SETTINGS
@given(stack=stacks(3, 4))
def test_random_stacks(stack):
    shape, layers = stack
    _check_against_torch({"x": shape}, layers)


def test_errors_name_the_failing_layer():
    layers = [
        {"name": "small", "op": "max_pool", "kernel": 4},
        {"name": "big", "op": "conv", "channels": 2, "kernel": 5},
    ]
    with pytest.raises(SpecError) as info:
        netc.load_string(_describe({"x": (1, 16, 16)}, layers))
    assert info.value.layer == "big"


# --- open sizes ------------------------------------------------------------------------------


@settings(derandomize=True, max_examples=100, deadline=None)
@given(
    stack=stacks(1, 4),
    sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=3, max_size=3),
)
def test_open_sizes_evaluate_to_the_static_shapes(stack, sizes):
    """Compile with [C, null, null]; the symbolic sizes evaluate to torch's at each (H, W)."""
    (channels, _, _), layers = stack
    opened = _compile({"x": (channels, None, None)}, layers)
    checked = 0
    for h, w in sizes:
        expected = _oracle({"x": (channels, h, w)}, layers)
        static = _compile({"x": (channels, h, w)}, layers)
        assert (expected is None) == isinstance(static, SpecError)
        if expected is None:
            continue
        checked += 1
        if isinstance(opened, SpecError):
            # the one refusal that depends on openness: ceil_mode whose output depends on
            # the input's parity
            assert "parity" in str(opened), str(opened)
            assert any(layer.get("ceil_mode") for layer in layers)
            continue
        for layer in layers:
            node = opened.graph.node(layer["name"])
            inferred = tuple(sym.evaluate(d, {"H": h, "W": w}) for d in node.shape[1:])
            assert inferred == expected[layer["name"]], f"{layer['name']} at H={h}, W={w}"
            assert inferred == static.graph.node(layer["name"]).shape[1:]
    assume(checked)


def test_open_sizes_render_as_expressions():
    layers = [
        {"name": "c", "op": "conv", "channels": 4, "kernel": 3, "stride": 2, "padding": 1},
        {"name": "p", "op": "max_pool", "kernel": 3, "stride": 2, "ceil_mode": True},
        {"name": "u", "op": "upsample", "scale": [1, 2]},
    ]
    net = netc.load_string(_describe({"x": (3, None, None)}, layers))
    assert [str(d) for d in net.graph.node("c").shape] == ["N", "4", "(H+1)//2", "(W+1)//2"]
    assert [str(d) for d in net.graph.node("p").shape] == ["N", "4", "(H+1)//4", "(W+1)//4"]
    assert [str(d) for d in net.graph.node("u").shape] == ["N", "4", "(H+1)//4", "2*((W+1)//4)"]

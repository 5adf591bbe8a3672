"""PadFolding: an explicit Pad folded into the pads of the Conv or pool after it."""

import numpy as np
import pytest
from builders import GraphBuilder, ops, optimize, random_feeds, run
from helpers import assert_fp32_close

from netc.compiler.optimizer.passes.pad_fold import PadFolding

PADS = [0, 0, 1, 2, 0, 0, 2, 0]  # N, C, H, W begins, then ends


def assert_same(before, after):
    feeds = random_feeds(before)
    for got, want in zip(run(after, feeds), run(before, feeds)):
        assert_fp32_close(got, want)


def padded(g, x, pads=PADS, value=None, mode="constant", opset=17):
    if opset < 11:
        return g.node("Pad", [x], pads=pads, mode=mode, value=value or 0.0)
    inputs = [x, g.const(g.fresh("pads"), np.array(pads, np.int64))]
    if value is not None:
        inputs.append(g.const(g.fresh("value"), np.array(value, np.float32)))
    return g.node("Pad", inputs, mode=mode)


@pytest.mark.parametrize("opset", [10, 17])
@pytest.mark.parametrize(
    "reader",
    ["Conv", "AveragePool", "MaxPool"],
)
def test_pad_folds_into_the_reader(reader, opset):
    # Cases 1-3, with the reader's own pads added to.
    g = GraphBuilder(opset=opset)
    x = g.input("x", [1, 3, 7, 7])
    value = -np.inf if reader == "MaxPool" else None
    y = padded(g, g.node("Relu", [x]), value=value, opset=opset)
    if reader == "Conv":
        out = g.conv(y, 3, 4)  # pads [1, 1, 1, 1] of its own
    elif reader == "AveragePool":
        out = g.node(reader, [y], kernel_shape=[3, 3], pads=[1, 0, 0, 1], count_include_pad=1)
    else:
        out = g.node(reader, [y], kernel_shape=[3, 3], strides=[2, 2])
    model = g.build(out)
    optimized, reports = optimize(model, PadFolding)
    assert "Pad" not in ops(optimized)
    assert "with pads" in reports[0].notes[0]
    assert_same(model, optimized)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("reflect", "does not pad with a constant"),
        ("fill 1", "fills with 1"),
        ("channel", "batch or channel axis"),
        ("crop", "negative pad crops"),
        ("count_include_pad=0", "count_include_pad=0"),
        ("maxpool fill 0", "MaxPool's own padding"),
        ("read twice", "also feeds"),
    ],
)
def test_pads_that_are_not_the_readers_padding_are_refused(case, reason):
    g = GraphBuilder(opset=17)
    x = g.input("x", [1, 3, 7, 7])
    kwargs: dict = {}
    if case == "reflect":
        kwargs["mode"] = "reflect"
    elif case == "fill 1":
        kwargs["value"] = 1.0
    elif case == "channel":
        kwargs["pads"] = [0, 1, 0, 0, 0, 0, 0, 0]
    elif case == "crop":
        kwargs["pads"] = [0, 0, -1, 0, 0, 0, 0, 0]
    elif case == "maxpool fill 0":
        kwargs["value"] = 0.0
    y = padded(g, g.node("Relu", [x]), **kwargs)
    if case == "count_include_pad=0":
        out = g.node("AveragePool", [y], kernel_shape=[3, 3])
    elif case == "maxpool fill 0":
        out = g.node("MaxPool", [y], kernel_shape=[3, 3])
    elif case == "read twice":
        out = g.node("Add", [g.conv(y, 3, 3), y])
    else:
        out = g.conv(y, 4 if case == "channel" else 3, 4)
    model = g.build(out)
    optimized, reports = optimize(model, PadFolding)
    assert ops(optimized)["Pad"] == 1
    assert reason in reports[0].refusals[0]
    assert_same(model, optimized)

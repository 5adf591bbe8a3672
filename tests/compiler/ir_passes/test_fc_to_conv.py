"""FC → conv (FCN conversion): parameter counts kept, shapes opened, and the
sliding-window property: score map (i, j) = classifier on the window at (i·S, j·S)."""

import pytest
import torch
from helpers import assert_fp32_close

import netc
from netc.compiler.analysis import analyze
from netc.compiler.ir_passes.fc_to_conv import to_fully_convolutional
from netc.errors import UserError
from netc.runtime.module import build_module

NO_PADDING = """\
name: nopad
inputs: {image: [3, 20, 20]}
layers:
  - {name: conv1, op: conv, channels: 8, kernel: 3}
  - {name: relu1, op: relu}
  - {name: pool1, op: max_pool, kernel: 2}
  - {name: conv2, op: conv, channels: 8, kernel: 3, stride: 2}
  - {name: flatten, op: flatten}
  - {name: fc1, op: fc, units: 16}
  - {name: relu2, op: relu}
  - {name: drop, op: dropout}
  - {name: fc2, op: fc, units: 5}
"""


def _convert(source, **kwargs):
    net = netc.load_string(source) if "\n" in source else netc.load(source, **kwargs)
    classifier = build_module(net.graph, seed=0).eval()
    graph, weights = to_fully_convolutional(net.graph, classifier.state_dict())
    dense = build_module(graph).eval()
    dense.load_state_dict(weights)
    return net, classifier, graph, dense


@pytest.mark.parametrize("source", [NO_PADDING, "lenet5"])
def test_sliding_window_property(source):
    net, classifier, graph, dense = _convert(source)
    stride = int(analyze(graph).layers[-1].field.height.jump)
    size = net.graph.inputs["image"].shape[2]
    x = torch.randn(
        1,
        net.graph.inputs["image"].shape[1],
        size + 3 * stride,
        size + 2 * stride,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        scores = dense(x)
        assert scores.shape[2:] == (4, 3)
        for i in range(4):
            for j in range(3):
                window = x[:, :, i * stride : i * stride + size, j * stride : j * stride + size]
                # The same conv arithmetic on the same pixels: fp32 noise only.
                assert_fp32_close(
                    scores[:, :, i, j], classifier(window), what=f"position ({i}, {j})"
                )


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "resnet18"])
def test_parameter_count_is_unchanged_and_sizes_open(name):
    net = netc.load(name)
    graph, _ = to_fully_convolutional(net.graph, {})
    assert analyze(graph).params == net.analysis.params
    assert {n.op for n in graph.nodes}.isdisjoint({"fc", "flatten"})
    (output,) = analyze(graph).outputs.values()
    assert not isinstance(output.shape[2], int)  # H open


def test_declared_size_gives_a_one_by_one_map_equal_to_the_classifier():
    _, classifier, _, dense = _convert("resnet18", input_shape=(3, 64, 64))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert_fp32_close(dense(x)[:, :, 0, 0], classifier(x))


def test_refuses_what_cannot_slide():
    with pytest.raises(UserError, match="fully convolutional already"):
        to_fully_convolutional(netc.load("tinyseg").graph, {})
    with pytest.raises(UserError, match=r"'fc6'.*'spp'"):
        to_fully_convolutional(netc.load("sppnet", input_shape=(3, 224, 224)).graph, {})


TWO_INPUTS = """\
name: two
inputs:
  image: [3, 20, 20]
  same: [3, 20, 20]
  other: [3, null, null]
layers:
  - {name: joined, op: add, inputs: [image, same]}
  - {name: conv, op: conv, channels: 4, kernel: 3}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: 5}
  - {name: edges, op: conv, inputs: other, channels: 2, kernel: 3}
outputs: [fc, edges]
"""


def test_each_input_keeps_its_own_open_sizes():
    """Inputs of one fixed size share the opened symbols (their add stays valid); an
    input whose sizes were its own keeps them instead of being tied to the first's."""
    net = netc.load_string(TWO_INPUTS)
    graph, _ = to_fully_convolutional(net.graph, build_module(net.graph).state_dict())
    sizes = {name: tuple(str(d) for d in item.shape[2:]) for name, item in graph.inputs.items()}
    assert sizes == {"image": ("H", "W"), "same": ("H", "W"), "other": ("H_other", "W_other")}

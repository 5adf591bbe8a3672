"""The PyTorch module lowered from the IR computes the same function as plain
torch.nn references (tests/reference/torch_zoo.py, written like torchvision),
and carries the description's layer names, initialisation and freezing."""

import pytest
import torch
import torch_zoo
from helpers import assert_close, assert_fp32_close

import netc
from netc.runtime.module import build_module

# Small inputs keep the suite fast; every net here accepts them.
CASES = {
    "lenet5": (1, 32, 32),
    "alexnet": (3, 96, 96),
    "vgg11": (3, 64, 64),
    "resnet18": (3, 64, 64),
    "resnet50": (3, 64, 64),
    "googlenet": (3, 64, 64),
    "densenet121": (3, 64, 64),
    "tinyseg": (3, 48, 64),
    "fcn8s": (3, 40, 52),
    "sppnet": (3, 80, 96),
}


def _copy_by_order(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Copy weights between two modules that register their tensors in the same order."""
    src, dst = source.state_dict(), target.state_dict()
    src = {k: v for k, v in src.items() if not k.endswith("num_batches_tracked")}
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    assert len(src) == len(dst_keys), "different numbers of tensors"
    for (src_key, value), dst_key in zip(src.items(), dst_keys):
        assert value.shape == dst[dst_key].shape, f"{src_key} {value.shape} vs {dst_key}"
        dst[dst_key] = value
    target.load_state_dict(dst)


@pytest.mark.parametrize("name", sorted(CASES))
def test_compiled_module_matches_the_torch_reference(name):
    torch.manual_seed(0)
    reference = torch_zoo.build(name).eval()
    for module in reference.modules():  # non-trivial BN statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    compiled = build_module(netc.load(name).graph).eval()
    _copy_by_order(reference, compiled)
    x = torch.randn(2, *CASES[name], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = reference(x), compiled(x)
    # fp32, the same function through other modules: summation-order noise only.
    assert_fp32_close(actual, expected, what=name)


def test_state_dict_names_come_from_the_description():
    module = build_module(netc.load("resnet18").graph)
    keys = set(module.state_dict())
    assert {
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_var",
        "fc.bias",
    } <= keys
    assert not any(key.startswith("layer1.0.downsample") for key in keys)


def test_multiple_outputs_return_a_dict():
    net = netc.load_string("""
name: two_heads
inputs: {image: [3, 16, 16]}
layers:
  - {name: trunk, op: conv, channels: 4, kernel: 3, padding: 1}
  - {name: seg, op: conv, inputs: trunk, channels: 2, kernel: 1}
  - {name: pool, op: global_avg_pool, inputs: trunk}
  - {name: flat, op: flatten}
  - {name: cls, op: fc, units: 5}
outputs: {mask: seg, label: cls}
""")
    out = build_module(net.graph)(torch.randn(2, 3, 16, 16))
    assert set(out) == {"mask", "label"}
    assert out["mask"].shape == (2, 2, 16, 16) and out["label"].shape == (2, 5)


def test_same_padding_with_an_even_kernel_matches_pytorch():
    net = netc.load_string("""
name: same
inputs: {image: [2, 9, 10]}
layers:
  - {name: conv, op: conv, channels: 3, kernel: [4, 2], padding: same, dilation: [1, 2]}
""")
    module = build_module(net.graph)
    reference = torch.nn.Conv2d(2, 3, (4, 2), padding="same", dilation=(1, 2))
    reference.load_state_dict(module.conv.state_dict())
    x = torch.randn(1, 2, 9, 10)
    assert_fp32_close(module(x), reference(x))


def test_init_kinds_and_frozen_layers():
    net = netc.load_string("""
name: inits
inputs: {image: [16, 32, 32]}
layers:
  - {name: g, op: conv, channels: 64, kernel: 3, init: {type: gaussian, std: 0.02, bias: 0.5}}
  - {name: he, op: conv, channels: 64, kernel: 3, init: {type: he, mode: fan_in}}
  - {name: xa, op: conv, channels: 64, kernel: 1, init: xavier, trainable: false}
  - {name: up, op: conv_transpose, channels: 64, kernel: 4, stride: 2, bias: false, init: bilinear}
""")
    module = build_module(net.graph, seed=0)
    assert abs(module.g.weight.std().item() - 0.02) < 0.002
    assert torch.all(module.g.bias == 0.5)
    assert abs(module.he.weight.std().item() - (2 / (64 * 9)) ** 0.5) < 0.005
    bound = (6 / (64 + 64)) ** 0.5
    assert module.xa.weight.abs().max().item() <= bound
    assert not module.xa.weight.requires_grad and module.he.weight.requires_grad
    kernel = module.up.weight[0, 0]
    assert_close(kernel[1:3, 1:3], torch.full((2, 2), 0.5625), rtol=0, atol=1e-7)
    assert module.up.weight[0, 1].abs().sum() == 0


def test_seed_makes_initial_weights_reproducible():
    graph = netc.load("lenet5").graph
    first, second = build_module(graph, seed=3), build_module(graph, seed=3)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    third = build_module(graph, seed=4)
    assert not torch.equal(first.conv1.weight, third.conv1.weight)

"""Layer names PyTorch cannot register are refused where they are written."""

import pytest
import torch

import netc
from netc.compiler.reserved_names import MODULE_ATTRIBUTES
from netc.errors import SpecError
from netc.runtime.module import build_module


def test_the_set_is_torchs_own():
    assert set(dir(torch.nn.Module())) == MODULE_ATTRIBUTES


@pytest.mark.parametrize("name", ["half", "train", "stage.forward", "training"])
def test_a_module_attribute_as_a_layer_name_is_a_located_error(name):
    source = f"""\
name: reserved
inputs: {{image: [1, 8, 8]}}
layers:
  - {{name: conv, op: conv, channels: 2, kernel: 3}}
  - {{name: {name}, op: relu}}
"""
    with pytest.raises(SpecError) as caught:
        netc.load_string(source)
    message = str(caught.value)
    assert ":5:" in message and "attribute of PyTorch's nn.Module" in message
    assert "hint: rename it" in message


def test_a_name_that_only_contains_an_attribute_builds():
    net = netc.load_string("""\
name: fine
inputs: {image: [1, 8, 8]}
layers:
  - {name: half_conv, op: conv, channels: 2, kernel: 3}
  - {name: trainer, op: relu}
""")
    assert "half_conv.weight" in build_module(net.graph).state_dict()

"""Bilinear resampling as torch does it, and netc's symbolic output sizes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_fp32_close

from netc.model_card import size_rule
from netc.serving.errors import InvalidRequest
from netc.serving.images import geometry

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("size", [(32, 32), (5, 13), (3, 3)])
def test_resize_is_torch_bilinear_without_antialiasing(size):
    x = RNG.random((3, 11, 17), dtype=np.float32)
    expected = F.interpolate(
        torch.from_numpy(x)[None], size=size, mode="bilinear", align_corners=False
    )[0]
    assert_fp32_close(geometry.resize(x, size), expected)


def test_size_rules_parse_netc_dimensions_only():
    assert size_rule("4*(H//4)", "H")(50) == 48
    assert size_rule("(H-28)//4", "H")(60) == 8
    assert size_rule("W", "W")(9) == 9
    for foreign in ("unk__12", "H*W", "__import__('os')", "H**2", "W//2", 7, None):
        assert size_rule(foreign, "H") is None
    assert size_rule("H//2", 32) is None  # a fixed input dimension
    assert geometry.fitted_size(50, size_rule("4*(H//4)", "H")) == 52
    assert geometry.fitted_size(60, size_rule("(H-28)//4", "H")) == 60
    with pytest.raises(InvalidRequest, match="too small for the model: expected at least 32"):
        geometry.fitted_size(20, size_rule("(H-28)//4", "H"))

"""Several outputs with a loss and a weight each (auxiliary heads, deep supervision), and
binary cross-entropy with a positive-class weight."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

from netc.compiler.network import load_string
from netc.errors import ConfigError
from netc.runtime import checkpoint
from netc.runtime.losses import build_loss
from netc.runtime.module import build_module
from netc.runtime.output_losses import build_output_losses
from netc.runtime.train import train

THREE_HEADS = """\
name: heads
params: {num_classes: 10}
inputs: {image: [1, 8, 8]}
layers:
  - {name: conv1, op: conv, channels: 6, kernel: 3, padding: 1}
  - {name: relu1, op: relu}
  - {name: flatten, op: flatten}
  - {name: fc, op: fc, units: $num_classes}
  - {name: aux, op: fc, inputs: flatten, units: $num_classes}
  - {name: probe, op: fc, inputs: flatten, units: $num_classes}
outputs: [fc, aux, probe]
training:
  epochs: 1
  batch_size: 32
  optimizer: {type: sgd, lr: 0.05, momentum: 0}
  losses:
    fc: {loss: cross_entropy}
    aux: {loss: cross_entropy, weight: AUX_WEIGHT}
"""


def _module():
    graph = load_string(THREE_HEADS.replace("AUX_WEIGHT", "0.3")).graph
    return build_module(graph, seed=0), list(graph.outputs)


def _grads(module, loss) -> dict[str, torch.Tensor | None]:
    module.zero_grad(set_to_none=True)
    loss.backward()
    return {
        name: None if p.grad is None else p.grad.clone() for name, p in module.named_parameters()
    }


def test_an_aux_loss_weight_scales_its_gradient():
    module, outputs = _module()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    section = {"fc": {"loss": "cross_entropy"}, "aux": {"loss": "cross_entropy", "weight": 0.3}}
    losses = build_output_losses(
        section, None, outputs=outputs, task="classification", num_classes=10
    )
    combined = _grads(module, losses(module(x), y))
    main = _grads(module, F.cross_entropy(module(x)["fc"], y))
    aux = _grads(module, F.cross_entropy(module(x)["aux"], y))
    assert_close(combined["aux.weight"], 0.3 * aux["aux.weight"], rtol=1e-5, atol=1e-8)
    assert_close(combined["fc.weight"], main["fc.weight"], rtol=1e-5, atol=1e-8)
    trunk = main["conv1.weight"] + 0.3 * aux["conv1.weight"]
    assert_close(combined["conv1.weight"], trunk, rtol=1e-5, atol=1e-8)
    assert combined["probe.weight"] is None  # an output without a loss is evaluation-only


def test_training_with_output_losses_trains_only_the_heads_with_a_loss(tmp_path):
    spec = tmp_path / "heads.yaml"
    spec.write_text(THREE_HEADS.replace("AUX_WEIGHT", "0.3"))
    result = train(str(spec), "digits", tmp_path / "run", quiet=True)
    trained = checkpoint.load(tmp_path / "run")["model"]
    fresh, _ = _module()
    start = fresh.state_dict()
    assert not torch.equal(trained["aux.weight"], start["aux.weight"])
    assert torch.equal(trained["probe.weight"], start["probe.weight"])
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_accuracy"] == result.history[0]["val_accuracy"] > 0.3  # the fc output's


def test_a_loss_for_an_output_the_network_lacks_is_named():
    with pytest.raises(ConfigError, match=r"(?s)training\.losses\.axu.*did you mean 'aux'"):
        build_output_losses(
            {"axu": {"weight": 0.3}},
            None,
            outputs=["fc", "aux"],
            task="classification",
            num_classes=10,
        )
    with pytest.raises(ConfigError, match=r"training\.losses\.aux\.wieght"):
        build_output_losses(
            {"aux": {"wieght": 0.3}},
            None,
            outputs=["fc", "aux"],
            task="classification",
            num_classes=10,
        )


def test_binary_cross_entropy_weighs_positives_and_skips_ignored_pixels():
    loss = build_loss(
        {"type": "binary_cross_entropy", "pos_weight": 4.0}, task="segmentation", num_classes=2
    )
    logits = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])  # (1, 1, 2, 2)
    masks = torch.tensor([[[1, 0], [255, 1]]])
    sigmoid = torch.sigmoid(logits[0, 0])
    expected = (
        -4.0 * torch.log(sigmoid[0, 0])
        - torch.log(1 - sigmoid[0, 1])
        - 4.0 * torch.log(sigmoid[1, 1])
    ) / 3
    assert_close(loss(logits, masks), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(Exception, match="one logit per example"):
        loss(torch.zeros(1, 2, 2, 2), masks)


def test_a_one_logit_classifier_trains_with_binary_cross_entropy(tmp_path):
    spec = tmp_path / "binary.yaml"
    spec.write_text(
        "name: binary\ninputs: {image: [1, 4, 4]}\nlayers:\n"
        "  - {name: flatten, op: flatten}\n  - {name: fc, op: fc, units: 1}\n"
        "training: {epochs: 5, batch_size: 16, loss: {type: binary_cross_entropy, "
        "pos_weight: 2.0}, optimizer: {type: sgd, lr: 0.5}}\n"
    )
    generator = np.random.default_rng(0)
    y = np.arange(160) % 2
    x = generator.random((160, 1, 4, 4)).astype(np.float32) * 0.5 + y[:, None, None, None] * 0.5
    np.savez(tmp_path / "data.npz", x=x, y=y)
    result = train(str(spec), str(tmp_path / "data.npz"), tmp_path / "run", quiet=True)
    assert result.history[-1]["val_accuracy"] > 0.9  # logit > 0 read as class 1


def test_deep_supervision_trains_every_side_output(tmp_path):
    """examples/tinyseg_deep_supervision.yaml on a few small pictures of `shapes`."""
    from pathlib import Path

    from netc.runtime.datasets import make_shapes

    data = make_shapes(count=48, size=16, seed=1)
    np.savez(tmp_path / "shapes.npz", x=data.images.numpy(), y=data.targets.numpy())
    example = Path(__file__).parents[2] / "examples" / "tinyseg_deep_supervision.yaml"
    overrides = {"epochs": 1, "threads": 1}
    result = train(
        str(example),
        str(tmp_path / "shapes.npz"),
        tmp_path / "run",
        overrides=overrides,
        quiet=True,
    )
    assert "val_mean_iou" in result.history[0]
    graph = load_string(example.read_text()).graph
    start = build_module(graph, seed=0).state_dict()
    trained = checkpoint.load(tmp_path / "run")["model"]
    for side in ("side1.weight", "side2_scores.weight", "classifier.weight"):
        assert not torch.equal(trained[side], start[side]), side
    from netc.cli import main

    assert main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "deep.onnx")]) == 0

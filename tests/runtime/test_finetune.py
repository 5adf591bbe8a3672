"""Fine-tuning as users expect: a torchvision-layout checkpoint, a new head, a body frozen
for the first epochs and trained at a lower rate after, random resized crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_zoo
from helpers import assert_close
from PIL import Image

from netc.cli import main
from netc.compiler import zoo
from netc.errors import ConfigError
from netc.runtime import checkpoint
from netc.runtime.config import parse_training
from netc.runtime.layer_patterns import Freeze, multiplier_for
from netc.runtime.optim import build_optimizer
from netc.runtime.preprocess import Augment, crop_boxes, resized_crops

BODY = ["conv1", "bn1", "layer*"]

TRAINING = """
training:
  epochs: 2
  batch_size: 8
  val_fraction: 0.25
  normalize: imagenet
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
  schedule: none
  freeze: {layers: [conv1, bn1, 'layer*'], epochs: 2}
  lr_multipliers: {conv1: 0.1, bn1: 0.1, 'layer*': 0.1}
  augment: {random_resized_crop: {scale: [0.5, 1.0]}, hflip: true}
"""


def _resnet18_at_32(tmp_path) -> str:
    """The zoo's resnet18 (torchvision's layer names) at 32x32 input, for speed."""
    text = zoo.read("resnet18")
    assert "image: [3, 224, 224]" in text
    spec = tmp_path / "resnet18.yaml"
    spec.write_text(text.replace("image: [3, 224, 224]", "image: [3, 32, 32]") + TRAINING)
    return str(spec)


def _image_folder(root) -> str:
    """Two classes told apart by which half of the picture is bright; 12 pictures each."""
    generator = np.random.default_rng(0)
    for label, side in (("left", 0), ("right", 1)):
        (root / label).mkdir(parents=True)
        for index in range(12):
            pixels = generator.integers(0, 60, (40, 40, 3), dtype=np.uint8)
            pixels[:, side * 20 : side * 20 + 20] += 150
            Image.fromarray(pixels).save(root / label / f"{index}.png")
    return str(root)


def _pretrained(tmp_path):
    torch.manual_seed(0)
    reference = torch_zoo.build("resnet18")
    with torch.no_grad():
        for layer in reference.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.normal_(0.0, 0.1)
                layer.running_var.uniform_(0.5, 2.0)
    state = reference.state_dict()
    torch.save(state, tmp_path / "resnet18-imagenet.pth")
    return state


def test_fine_tuning_a_torchvision_checkpoint_with_a_new_head(tmp_path, capsys):
    spec = _resnet18_at_32(tmp_path)
    data = _image_folder(tmp_path / "pictures")
    pretrained = _pretrained(tmp_path)
    run = tmp_path / "run"
    args = ["train", spec, "--data", data, "--out", str(run), "--set", "num_classes=2"]
    init = ["--init-from", str(tmp_path / "resnet18-imagenet.pth"), "--threads", "1"]
    assert main([*args, *init]) == 0
    err = capsys.readouterr().err
    assert "read 122 tensors (PyTorch state_dict), layout netc (detected" in err
    assert "loaded 40 layers" in err
    assert "skipped fc: shape (1000, 512) in the checkpoint, (2, 512) here (weight)" in err

    # epochs 1-2: the body is frozen, batch norms included; only the new head learned
    after_two = checkpoint.load(run / "last.pt")
    body = [key for key in pretrained if not key.startswith("fc.")]
    for key in body:
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(after_two["model"][key], pretrained[key]), key
    assert after_two["model"]["fc.weight"].shape == (2, 512)
    groups = after_two["optimizer"]["param_groups"]
    assert [group["lr"] for group in groups] == pytest.approx([0.05, 0.005])
    assert len(groups[0]["params"]) == 2  # fc's weight and bias; the body is group 1

    # epoch 3: the body trains, at a tenth of the head's rate
    assert main([*args, "--resume", "--epochs", "3", "--threads", "1"]) == 0
    after_three = checkpoint.load(run / "last.pt")["model"]
    moved = [key for key in body if not torch.equal(after_three[key], pretrained[key])]
    assert "layer1.0.conv1.weight" in moved and "bn1.running_mean" in moved
    assert after_three["fc.weight"].shape == (2, 512)


def test_lr_multipliers_scale_each_layers_step():
    module = torch.nn.Sequential()
    module.add_module("body", torch.nn.Linear(3, 3))
    module.add_module("head", torch.nn.Linear(3, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    optimizer = build_optimizer(
        module, {"type": "sgd", "lr": 0.5, "momentum": 0}, lr_multipliers={"body": 0.1}
    )
    module(torch.ones(4, 3)).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    optimizer.step()
    for name, param in module.named_parameters():
        rate = 0.05 if name.startswith("body") else 0.5
        assert_close(param.detach(), before[name] - rate * grads[name], rtol=1e-6, atol=1e-7)


def test_multipliers_take_the_first_matching_pattern_and_a_block_prefix():
    multipliers = {"layer4": 1.0, "layer*": 0.1}
    assert multiplier_for("layer4.1.conv2.weight", multipliers) == 1.0
    assert multiplier_for("layer1.0.bn1.bias", multipliers) == 0.1
    assert multiplier_for("fc.weight", multipliers) == 1.0


def test_a_pattern_that_matches_no_layer_is_named():
    module = torch.nn.Sequential()
    module.add_module("layer1", torch.nn.Linear(3, 3))
    with pytest.raises(ConfigError, match=r"(?s)training.freeze\['lyer1'\].*did you mean 'layer1'"):
        Freeze.select(module, ["lyer1"], None)


def test_freeze_and_multipliers_are_checked_settings():
    config = parse_training({"freeze": "layer*", "lr_multipliers": {"layer*": 0.1}})
    assert config.freeze == {"layers": ["layer*"], "epochs": None}
    assert config.lr_multipliers == {"layer*": 0.1}
    with pytest.raises(ConfigError, match=r"training\.freeze\.epoch"):
        parse_training({"freeze": {"layers": ["a"], "epoch": 2}})
    with pytest.raises(ConfigError, match=r"training\.lr_multipliers\.a"):
        parse_training({"lr_multipliers": {"a": -1}})
    with pytest.raises(ConfigError, match=r"random_resized_crop\.scale"):
        parse_training({"augment": {"random_resized_crop": {"scale": [0.9, 0.1]}}})


def test_random_resized_crop_reads_its_box_resized_to_the_whole_size():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = resized_crops(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "bilinear")
    assert_close(whole, x, rtol=0, atol=1e-6)
    box = torch.tensor([[2.0, 4.0, 4.0, 4.0]])  # rows 2-5, columns 4-7: twice enlarged
    crop = resized_crops(x, box, "bilinear")
    expected = torch.nn.functional.interpolate(
        x[:, :, 2:6, 4:8], size=(8, 8), mode="bilinear", align_corners=False
    )
    # inside, both read the same four pixels; at the box's edge the crop reads the image
    # beyond it where interpolate repeats the edge
    assert_close(crop[..., 1:7, 1:7], expected[..., 1:7, 1:7], rtol=0, atol=1e-6)


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    generator = torch.Generator().manual_seed(0)
    settings = {"scale": [0.25, 0.5], "ratio": [0.75, 4 / 3]}
    boxes = crop_boxes(200, 64, 64, settings, generator)
    top, left, height, width = boxes.unbind(1)
    area = height * width / 64**2
    assert area.min() >= 0.23 and area.max() <= 0.52  # rounding to whole pixels
    assert (width / height).min() >= 0.7 and (width / height).max() <= 1.4
    assert (top >= 0).all() and (top + height <= 64).all()
    assert (left >= 0).all() and (left + width <= 64).all()
    assert len(set(map(tuple, boxes.tolist()))) > 150  # different boxes for each sample


def test_masks_are_cropped_with_their_images():
    image = torch.zeros(1, 1, 8, 8)
    image[..., :, 4:] = 1.0
    mask = (image[:, 0] > 0.5).long()
    augment = Augment(resized_crop={"scale": [0.3, 0.6], "ratio": [1.0, 1.0]})
    cropped, cropped_mask = augment(image, mask, torch.Generator().manual_seed(3))
    assert cropped_mask.dtype == torch.long
    assert torch.equal((cropped[:, 0] > 0.5).long(), cropped_mask)


def test_the_documented_example_takes_torchvisions_resnet18(tmp_path):
    """examples/resnet18_finetune.yaml (docs/training.md): every torchvision key lands on
    one of its parameters, and its training settings read."""
    from pathlib import Path

    from netc.compiler.network import load
    from netc.runtime.module import build_module
    from netc.runtime.weight_layouts import to_netc

    example = Path(__file__).parents[2] / "examples" / "resnet18_finetune.yaml"
    network = load(str(example))
    with torch.device("meta"):
        ours = build_module(network.graph).state_dict()
        theirs = torch_zoo.build("resnet18").state_dict()
    mapped = to_netc(theirs, network.graph, ours)
    assert sorted(mapped.tensors) == sorted(ours)
    config = parse_training(network.spec.training)
    assert config.normalize == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert config.freeze == {"layers": ["conv1", "bn1", "layer*"], "epochs": 2}
    assert config.augment["random_resized_crop"] == {"scale": [0.08, 1.0], "ratio": [0.75, 4 / 3]}


def test_trainable_false_on_a_block_freezes_its_every_layer():
    from netc.compiler.network import load_string
    from netc.runtime.module import build_module

    text = zoo.read("resnet18").replace(
        "{name: layer1, block: basic, repeat: 2, channels: 64}",
        "{name: layer1, block: basic, repeat: 2, channels: 64, trainable: false}",
    )
    graph = load_string(text.replace("image: [3, 224, 224]", "image: [3, 32, 32]")).graph
    frozen = {node.name for node in graph.nodes if not node.trainable}
    assert "layer1.0.conv1" in frozen and "layer1.1.bn2" in frozen
    assert not any(name.startswith("layer2") for name in frozen)
    module = build_module(graph, seed=0)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert "layer1.0.conv1.weight" not in trainable and "layer2.0.conv1.weight" in trainable

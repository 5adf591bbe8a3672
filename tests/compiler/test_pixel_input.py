"""`netc export --pixel-input` (compiler/pixel_input.py): a model that takes raw pixels
0..255 answers as the original does on the picture netc's server prepares, its card
says how to feed it, and the optimizer still folds and verifies it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import assert_close, assert_fp32_close

from netc.compiler.network import load_string
from netc.compiler.onnx_export import export_onnx, metadata_for
from netc.compiler.optimizer.api import optimize_model
from netc.compiler.pixel_input import SCALE, check_pixel_input, take_pixels
from netc.errors import UserError
from netc.model_card import ModelCard, props_of
from netc.runtime.module import build_module
from netc.serving.images import prepare
from netc.serving.model_info import ModelInfo, TensorSpec

LABEL_NAMES = ["a", "b", "c", "d", "e"]


def _description(channels: int, padding: int) -> str:
    return f"""\
name: tiny{channels}
task: classification
inputs:
  image: [{channels}, 12, 12]
layers:
  - {{name: conv1, op: conv, channels: 6, kernel: 3, padding: {padding}}}
  - {{name: bn1, op: batch_norm}}
  - {{name: relu1, op: relu}}
  - {{name: pool, op: global_avg_pool}}
  - {{name: flatten, op: flatten}}
  - {{name: fc, op: fc, units: 5}}
outputs: [fc]
"""


def _model(channels: int, *, mean=None, std=None, value_range=(0.0, 1.0), padding=1):
    """A seeded random classifier with `mean`, `std` and `value_range` on its card."""
    graph = load_string(_description(channels, padding)).graph
    weights = build_module(graph, seed=0).state_dict()
    weights = {k: v for k, v in weights.items() if not k.endswith("num_batches_tracked")}
    rng = np.random.default_rng(1)  # batch norm statistics that do something
    weights["bn1.running_mean"] = rng.normal(0, 0.5, 6).astype(np.float32)
    weights["bn1.running_var"] = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    card = metadata_for(
        "classification",
        LABEL_NAMES,
        {"mean": mean, "std": std},
        next(iter(graph.inputs.values())).shape,
    )
    assert card.preprocessing is not None
    card = replace(card, preprocessing=replace(card.preprocessing, value_range=value_range))
    return export_onnx(graph, weights, card=card)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _pixels(channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(3, channels, 12, 12)).astype(np.float32)


CARDS = {  # (channels, mean, std, value_range)
    "grey, one mean and std": (1, [0.3], [0.25], (0.0, 1.0)),
    "rgb, per channel": (3, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], (0.0, 1.0)),
    "rgb, one mean, no std": (3, [0.5], None, (0.0, 1.0)),
    "rgb, no mean or std": (3, None, None, (0.0, 1.0)),
    "grey, range -1..1 and per-channel std": (1, [0.1], [2.0], (-1.0, 1.0)),
    "rgb, range 0..255 with mean": (3, [120.0, 110.0, 100.0], [60.0, 58.0, 57.0], (0.0, 255.0)),
}


@pytest.mark.parametrize("case", CARDS, ids=list(CARDS))
def test_the_model_on_pixels_equals_the_original_on_the_normalised_picture(case):
    channels, mean, std, (low, high) = CARDS[case]
    original = _model(channels, mean=mean, std=std, value_range=(low, high))
    edited = take_pixels(original)
    pixels = _pixels(channels)
    # what training and netc's server feed the original model, written out here
    x = pixels / 255.0 * (high - low) + low
    if mean is not None:
        x = x - np.asarray(mean).reshape(1, -1, 1, 1)
    if std is not None:
        x = x / np.asarray(std).reshape(1, -1, 1, 1)
    expected = _run(original, x.astype(np.float32))
    assert_fp32_close(_run(edited, pixels), expected, what=case)
    # the edit matters: the original on raw pixels answers something else
    assert np.abs(_run(original, pixels) - expected).max() > 1e-2
    ops = [n.op_type for n in edited.graph.node]
    assert ops[: len(ops) - len(original.graph.node)] == (
        ["Add", "Mul"] if mean is not None or low != 0 else ["Mul"]
    )


def test_the_input_keeps_its_name_and_shape_and_the_card_says_pixels():
    original = _model(3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    original.metadata_props.add(key="other.tool", value="kept")
    edited = take_pixels(onnx.load_from_string(original.SerializeToString()))
    image, before_image = edited.graph.input[0], original.graph.input[0]
    assert (image.name, image.type) == (before_image.name, before_image.type)
    before, after = ModelCard.from_model(original), ModelCard.from_model(edited)
    assert before.preprocessing is not None
    assert after.preprocessing == replace(
        before.preprocessing, mean=None, std=None, value_range=(0.0, 255.0)
    )
    assert replace(after, preprocessing=None) == replace(before, preprocessing=None)
    assert list(props_of(edited)) == list(props_of(original))  # same keys, same order
    assert props_of(edited)["other.tool"] == "kept"
    # the card survives the file: written, read back, read by the server's side
    again = onnx.load_from_string(edited.SerializeToString())
    assert ModelCard.from_model(again) == after
    onnx.checker.check_model(edited, full_check=True)
    assert take_pixels(edited).graph.node == edited.graph.node  # already pixels: unchanged


@pytest.mark.parametrize("channels", [1, 3])
def test_netc_server_prepares_a_picture_for_both_models_alike(channels):
    """serving/images/prepare.py with the edited card: the picture's pixel values, and the
    edited model's answer on them is the original's on its own prepared input."""
    mean = [0.485, 0.456, 0.406][:channels]
    original = _model(channels, mean=mean, std=[0.229, 0.224, 0.225][:channels])
    edited = take_pixels(original)
    rng = np.random.default_rng(5)
    picture = (rng.integers(0, 256, size=(channels, 20, 17)) / 255.0).astype(np.float32)

    def info(model):
        card = ModelCard.from_model(model)
        return ModelInfo(
            name="m",
            version="1",
            inputs=(TensorSpec("image", "FP32", (channels, 12, 12)),),
            outputs=(TensorSpec("fc", "FP32", (5,)),),
            max_batch_size=8,
            preprocessing=card.preprocessing,
        )

    plain, pixels = prepare.prepare(picture, info(original)), prepare.prepare(picture, info(edited))
    spec = prepare.image_input(info(edited))
    assert spec.mean is None and spec.std is None and spec.value_range == (0.0, 255.0)
    resized = prepare.prepare(picture, replace(spec, value_range=(0.0, 1.0))).tensor
    assert_close(pixels.tensor, resized * 255.0, rtol=1e-6, atol=1e-4, what="pixels")
    assert_fp32_close(_run(edited, pixels.tensor), _run(original, plain.tensor))


def test_the_optimizer_folds_the_scale_into_the_first_conv_and_verifies():
    original = _model(3, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    edited = take_pixels(original)
    result = optimize_model(edited, verify=True)
    optimized = result.model
    ops = [n.op_type for n in optimized.graph.node]
    assert "Mul" not in ops and "BatchNormalization" not in ops, ops
    pixels = _pixels(3, seed=2)
    assert_fp32_close(_run(optimized, pixels), _run(edited, pixels))


def test_the_check_catches_a_wrong_edit():
    original = _model(1, mean=[0.3], std=[0.25])
    edited = take_pixels(original)
    assert check_pixel_input(original, edited, [(2, 1, 12, 12)]) < 1e-3
    scale = next(t for t in edited.graph.initializer if t.name == SCALE)
    wrong = onnx.numpy_helper.to_array(scale) * np.float32(1.01)
    scale.CopyFrom(onnx.numpy_helper.from_array(wrong, SCALE))
    with pytest.raises(UserError, match="disagrees with the original on output 'fc'"):
        check_pixel_input(original, edited, [(2, 1, 12, 12)])


def test_models_it_cannot_edit_are_refused_with_the_reason():
    model = _model(3, mean=[0.5, 0.5], std=None)  # two means for three channels
    with pytest.raises(UserError, match=r"mean \[0.5, 0.5\] does not fit 3 channels"):
        take_pixels(model)
    model = _model(1, std=[0.0])
    with pytest.raises(UserError, match=r"std \[0.0\] has a zero"):
        take_pixels(model)
    model = _model(1, value_range=(1.0, 1.0))
    with pytest.raises(UserError, match=r"value_range \[1, 1\] maps every pixel to one value"):
        take_pixels(model)
    model = _model(1)
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("mask", onnx.TensorProto.FLOAT, [1])
    )
    with pytest.raises(UserError, match=r"one image input; 'tiny1' has 2 \(image, mask\)"):
        take_pixels(model)
    model = _model(1)
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    with pytest.raises(UserError, match="float32 NCHW picture input; 'image' is UINT8"):
        take_pixels(model)


def test_export_writes_a_pixel_input_file_with_o(tmp_path, capsys):
    from netc.cli import main

    out = tmp_path / "lenet5.onnx"
    assert main(["export", "lenet5", "-o", str(out), "--pixel-input"]) == 0
    assert "takes pixel values 0..255 (--pixel-input)" in capsys.readouterr().out
    model = onnx.load(out)
    first = model.graph.node[0]
    assert (first.op_type, first.input[0]) == ("Mul", "image")  # a zoo net: no mean or std
    pre = ModelCard.from_model(model).preprocessing
    assert pre is not None and (pre.mean, pre.std, pre.value_range) == (None, None, (0.0, 255.0))

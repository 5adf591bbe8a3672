"""`netc export --pixel-input`: the model takes raw pixel values 0..255, its preprocessing
arithmetic moved into the graph.

Triton's image clients (`image_client.py`, `grpc_image_client.py`) with their default
scaling NONE send a picture's pixel values as float32 (resized, channels first for
NCHW) and nothing else; a netc model wants them scaled to its card's `value_range`
and normalised `(x - mean) / std` per channel. For pixels p in 0..255 and
value_range [lo, hi] that is, per channel,

    ((p/255)·(hi - lo) + lo - mean) / std  =  (p + c)·a,
    c = 255·(lo - mean)/(hi - lo),   a = (hi - lo)/(255·std)

(mean 0 and std 1 where the card has none). The Add comes first so that the Mul sits
right before the first layer: the optimizer's AffineFolding folds a Mul into a
following Conv's weights (its case 2), which it cannot do for an Add when the Conv
pads. A channel whose c is 0 or whose a is 1 still gets the node when another
channel needs it; a node every channel leaves unchanged is not written.

The card then says what the new input is, value_range [0, 255] with neither mean nor
std, so netc's own server (`serving/images/prepare.py`: a decoded picture in [0, 1]
times 255) and INT8 calibration prepare pictures for the edited model exactly as
before for the original: the same classes, up to fp32 rounding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from netc.errors import UserError
from netc.model_card import LAYOUT, PREPROCESSING, ModelCard, Preprocessing, props_of

PIXEL_MAX = 255.0
PIXEL_RANGE = (0.0, PIXEL_MAX)
RTOL, ATOL = 1e-4, 1e-5  # atol times max(1, max|expected|): fp32 rounding of two graphs
SHIFT, SCALE = "pixel_input.shift", "pixel_input.scale"


def pixel_affine(pre: Preprocessing, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(c, a), each (channels,) float64: the model's input is (p + c)·a for pixels p.

    UserError when the card's mean/std do not fit `channels` or its value range is empty."""
    try:
        mean, std = pre.normalisation(channels)
    except ValueError as exc:
        raise UserError(f"--pixel-input: {exc}") from None
    low, high = pre.value_range
    if not (math.isfinite(low) and math.isfinite(high)) or high == low:
        raise UserError(
            f"--pixel-input: netc.preprocessing value_range [{low:g}, {high:g}] maps every "
            "pixel to one value; it needs two different finite bounds"
        )
    means = np.asarray(mean if mean is not None else (0.0,) * channels, np.float64)
    stds = np.asarray(std if std is not None else (1.0,) * channels, np.float64)
    shift = PIXEL_MAX * (low - means) / (high - low)
    scale = (high - low) / (PIXEL_MAX * stds)
    return shift, scale


def normalised(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """What netc's server gives the original model for pixels (N, C, H, W) in 0..255, in
    its order of operations: p/255 (decoding), scaled to value_range, - mean, / std."""
    channels = pixels.shape[1]
    mean, std = pre.normalisation(channels)
    x = pixels.astype(np.float32) / np.float32(PIXEL_MAX)
    low, high = pre.value_range
    if (low, high) != (0.0, 1.0):
        x = x * np.float32(high - low) + np.float32(low)
    if mean is not None:
        x = x - np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    if std is not None:
        x = x / np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return x.astype(np.float32)


def take_pixels(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a netc export that takes raw pixels 0..255 in the same input tensor (same
    name, shape and layout), with its card saying so. UserError for a model that does not
    take one float NCHW picture; a model that already takes pixels comes back unchanged."""
    image, channels = _image_input(model)
    if any(output.name == image.name for output in model.graph.output):
        raise UserError(
            f"--pixel-input: the input '{image.name}' is also an output of the model, which "
            "would then answer the pixels instead of the picture it was given"
        )
    pre = ModelCard.from_model(model).preprocessing or Preprocessing(channels=channels)
    shift, scale = pixel_affine(pre, channels)
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    graph = edited.graph
    taken = _names(graph)
    tensor, prefix = image.name, []
    for op, values, constant, unchanged in (("Add", shift, SHIFT, 0.0), ("Mul", scale, SCALE, 1.0)):
        if np.all(values == unchanged):
            continue
        constant = _fresh(constant, taken)
        graph.initializer.append(
            numpy_helper.from_array(values.astype(np.float32).reshape(1, channels, 1, 1), constant)
        )
        output = _fresh(f"{image.name}/pixel_input/{op.lower()}", taken)
        prefix.append(helper.make_node(op, [tensor, constant], [output], name=output))
        tensor = output
    if not prefix:
        return edited  # value_range [0, 255], no mean or std: it takes pixels already
    _read_from(graph, image.name, tensor)
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.input[0].doc_string = "raw pixel values 0..255 (netc export --pixel-input)"
    card = replace(pre, mean=None, std=None, value_range=PIXEL_RANGE)
    props = props_of(edited)
    props[PREPROCESSING] = json.dumps(card.to_json())
    helper.set_model_props(edited, props)
    return edited


def pixel_input_model(
    model: onnx.ModelProto, check_shapes: Iterable[Sequence[int]] = ()
) -> onnx.ModelProto:
    """`take_pixels(model)`, checked against `model` at each of `check_shapes` (none: not
    checked); what `netc export --pixel-input` writes, after the export's own check
    against PyTorch."""
    edited = take_pixels(model)
    check_pixel_input(model, edited, check_shapes)
    return edited


def check_pixel_input(
    original: onnx.ModelProto, edited: onnx.ModelProto, shapes: Iterable[Sequence[int]]
) -> float:
    """Largest |edited(p) - original(normalised(p))| over seeded pixels p of each shape;
    UserError beyond fp32 rounding (rtol 1e-4, atol 1e-5 times the output's scale)."""
    pre = ModelCard.from_model(original).preprocessing or Preprocessing()
    sessions = [_session(m) for m in (original, edited)]
    name = sessions[0].get_inputs()[0].name
    rng = np.random.default_rng(0)
    worst = 0.0
    for shape in shapes:
        pixels = rng.integers(0, 256, size=tuple(shape)).astype(np.float32)
        expected = sessions[0].run(None, {name: normalised(pixels, pre)})
        actual = sessions[1].run(None, {name: pixels})
        for output, got, want in zip(sessions[0].get_outputs(), actual, expected, strict=True):
            error = np.abs(got.astype(np.float64) - want)
            worst = max(worst, float(error.max(initial=0.0)))
            scale = max(1.0, float(np.abs(want).max(initial=0.0)))
            if not np.all(error <= ATOL * scale + RTOL * np.abs(want)):
                raise UserError(
                    f"--pixel-input: the model taking pixels disagrees with the original on "
                    f"output '{output.name}' at input {list(shape)}: max error "
                    f"{float(error.max()):.3g}; nothing was written"
                )
    return worst


def _image_input(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, int]:
    """The model's one input, a float (N, C, H, W) picture, and its channel count."""
    graph = model.graph
    stored = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in stored]
    if len(inputs) != 1:
        raise UserError(
            f"--pixel-input needs a model with one image input; '{graph.name}' has "
            f"{len(inputs)} ({', '.join(v.name for v in inputs)})"
        )
    image = inputs[0]
    kind = image.type.tensor_type
    dims = kind.shape.dim
    pre = ModelCard.from_model(model).preprocessing
    layout = pre.layout if pre is not None else LAYOUT
    if kind.elem_type != TensorProto.FLOAT or len(dims) != 4 or layout != LAYOUT:
        shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in dims]
        raise UserError(
            f"--pixel-input needs a float32 {LAYOUT} picture input; '{image.name}' is "
            f"{TensorProto.DataType.Name(kind.elem_type)} {shape} with layout {layout}"
        )
    channels = dims[1].dim_value if dims[1].HasField("dim_value") else None
    channels = channels or (pre.channels if pre is not None else None)
    if not channels:
        raise UserError(
            f"--pixel-input: the channel count of input '{image.name}' is open and the "
            "model card does not give it"
        )
    return image, channels


def _read_from(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that read `old` reads `new`, in subgraphs (If, Loop bodies) too."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        for attribute in node.attribute:
            subgraphs = list(attribute.graphs)
            if attribute.HasField("g"):
                subgraphs.append(attribute.g)
            for sub in subgraphs:
                _read_from(sub, old, new)


def _names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    for node in graph.node:
        names.update(node.output)
        names.add(node.name)
    return names


def _fresh(base: str, taken: set[str]) -> str:
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}/{n}"
    taken.add(name)
    return name


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )

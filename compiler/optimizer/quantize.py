"""INT8 post-training static quantization with onnxruntime's tool, and what to keep in float.

`quantize` runs `onnxruntime.quantization.quant_pre_process` (shape
inference and onnxruntime's basic fusions, as its documentation asks) and
then `quantize_static` with the settings onnxruntime recommends for x86
CPUs, which also suit TensorRT's QDQ import:

- QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops; at
  ORT_ENABLE_ALL onnxruntime fuses them into integer kernels);
- activations uint8, asymmetric, ranges calibrated on the given images with
  MinMax, percentile or entropy calibration;
- weights int8, symmetric, per output channel, and reduced to 7 bits
  (`reduce_range`): AVX2 CPUs without VNNI multiply uint8 by int8 pairwise
  into 16-bit sums that saturate with full 8-bit weights. Measured on digits
  (lenet5): 8-bit weights lost 4.8 points of accuracy on such a CPU, 7-bit
  none. 7-bit weights run correctly on every CPU.

Keeping a layer in float (`--keep-float`) has to keep its *output* in float
too: the damage an outlier does is done where that tensor is quantized, and
onnxruntime quantizes a tensor wherever a quantized op reads it. So
`float_region` excludes the layer, the ops that pass its values on unchanged
(ReLU, pooling, reshapes, concatenation: `PASS_THROUGH`) and the layers that
read them; those run in float on float inputs.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from netc.errors import UserError, did_you_mean
from netc.model_card import precision_props

METHODS = ("minmax", "percentile", "entropy")
CALIBRATION_BATCH = 16
# Ops whose output holds their input's values (selected, reordered, clipped or copied):
# onnxruntime quantizes them with their input's scale, so an outlier flows through them.
PASS_THROUGH = frozenset(
    {
        "Relu",
        "Clip",
        "MaxPool",
        "Flatten",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Dropout",
        "Resize",
        "Upsample",
        "Pad",
        "Slice",
        "Split",
        "Gather",
        "Concat",
        "DepthToSpace",
        "SpaceToDepth",
    }
)


def quantize(
    model: onnx.ModelProto,
    calibration: Sequence[dict[str, np.ndarray]] | np.ndarray,
    *,
    method: str = "minmax",
    keep_float: Iterable[str] = (),
    input_name: str | None = None,
    batch: int = CALIBRATION_BATCH,
    name: str = "the model",
) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    """(int8 QDQ model, the pre-processed fp32 model it was made from, nodes kept in float
    in graph order).

    `calibration` is a list of feeds, or one array of images for the only input
    (`input_name`), run `batch` images at a time. `keep_float` names
    layers (node names, or the tensors they compute) to keep in float with
    their outputs.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise UserError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")
    feeds = _feeds(model, calibration, input_name, batch)
    with tempfile.TemporaryDirectory(prefix="netc-int8-") as tmp:
        source, prepared, target = (Path(tmp) / f for f in ("in.onnx", "pre.onnx", "q.onnx"))
        onnx.save(_named(model), source)
        with quiet(), _failure(name, "prepare"):
            quant_pre_process(str(source), str(prepared))
        float_model = onnx.load(prepared)
        region = float_region(float_model, keep_float, name)
        excluded = [n.name for n in float_model.graph.node if n.name in region]
        calibrate = {
            "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy,
        }[method]
        with quiet(), _failure(name, "quantize"):
            quantize_static(
                str(prepared),
                str(target),
                _Reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=calibrate,
                extra_options={"CalibStridedMinMax": 1},
            )
        quantized = onnx.load(target)
    record: dict[str, Any] = {
        "format": "QDQ",
        "weights": "int8 per channel, 7 bit",
        "activations": "uint8",
    }
    record.update(calibration=method, samples=sum(len(next(iter(f.values()))) for f in feeds))
    if excluded:
        record["float"] = excluded
    set_metadata(quantized, precision_props("int8", record))
    return quantized, float_model, excluded


def float_region(model: onnx.ModelProto, names: Iterable[str], name: str) -> set[str]:
    """Node names to keep in float for `names`: each layer, the ops passing its output on
    unchanged, and the layers reading that output. UserError naming an unknown layer."""
    producers = {out: node for node in model.graph.node for out in node.output}
    by_name = {node.name: node for node in model.graph.node}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node)
    inputs = {value.name for value in model.graph.input}
    region: set[str] = set()
    for layer in names:
        if layer in by_name:
            start = list(by_name[layer].output)
            region.add(layer)
        elif layer in producers:
            start = [layer]
            region.add(producers[layer].name)
        elif layer in inputs:
            start = [layer]
        else:
            known = [n.name for n in model.graph.node if n.name]
            hint = did_you_mean(layer, known)
            raise UserError(
                f"{name}: --keep-float names no layer {layer!r}"
                + (f"; {hint}" if hint else f" (layers: {', '.join(known[:12])}, ...)")
            )
        _follow(start, readers, region)
    return region


def _follow(values: list[str], readers: dict[str, list[onnx.NodeProto]], region: set[str]):
    seen: set[str] = set()
    while values:
        value = values.pop()
        if value in seen:
            continue
        seen.add(value)
        for node in readers.get(value, []):
            region.add(node.name)
            if node.op_type in PASS_THROUGH:
                values.extend(node.output)


def layer_of(model: onnx.ModelProto, tensor: str) -> str:
    """The layer that computes `tensor`: its producer, or, through ops that pass values on
    unchanged from one input, the layer before them. A graph input names itself."""
    producers = {out: node for node in model.graph.node for out in node.output}
    stored = {t.name for t in model.graph.initializer}
    seen = set()
    while tensor in producers and tensor not in seen:
        seen.add(tensor)
        node = producers[tensor]
        data = [v for v in node.input if v and v not in stored]
        if node.op_type not in PASS_THROUGH or len(data) != 1 or data[0] not in producers:
            return node.name
        tensor = data[0]
    return tensor


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have unique names: onnxruntime excludes nodes by name."""
    named = onnx.ModelProto()
    named.CopyFrom(model)
    used = {node.name for node in named.graph.node if node.name}
    for node in named.graph.node:
        if not node.name or node.name in used - {node.name}:
            base = f"{node.op_type}_{node.output[0] if node.output else 'node'}"
            candidate, index = base, 1
            while candidate in used:
                candidate, index = f"{base}_{index}", index + 1
            node.name = candidate
            used.add(candidate)
    return named


def _feeds(model, calibration, input_name, batch: int) -> list[dict[str, np.ndarray]]:
    if not isinstance(calibration, np.ndarray):
        return list(calibration)
    if input_name is None:
        stored = {t.name for t in model.graph.initializer}
        input_name = next(i.name for i in model.graph.input if i.name not in stored)
    return [{input_name: calibration[i : i + batch]} for i in range(0, len(calibration), batch)]


class _Reader(CalibrationDataReader):
    """The calibration feeds, one batch at a time. With CalibStridedMinMax onnxruntime
    reads them in strides (`set_range`) and folds each stride's ranges into the total
    before the next, so only one batch's activations are held at a time (all of them
    would take ~9 MB an image for resnet18)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds
        self._next = iter(feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next = iter(self._feeds[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set `values` in the model's metadata_props, replacing entries of the same key."""
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in [*keep, *values.items()]:
        model.metadata_props.add(key=key, value=value)


@contextlib.contextmanager
def quiet():
    """onnxruntime's quantizer logs advice and prints progress; the report says what matters."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _failure(name: str, step: str):
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        raise UserError(
            f"{name}: onnxruntime's quantization tool fails to {step} this model: {text}"
        ) from None

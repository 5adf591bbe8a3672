"""Which layers quantization hurts most: the error of quantizing each layer's output.

As onnxruntime's QDQ debugging does (`qdq_loss_debug`), every activation the
int8 model quantizes is compared before and after its QuantizeLinear →
DequantizeLinear pair, as a signal-to-quantization-noise ratio
SQNR = 10·log10(Σx² / Σ(x − q(x))²) in dB (higher is better; 8 bits give
30-40 dB on a well-behaved tensor). Two differences make it name the culprit:

1. x is the fp32 model's own activation and q(x) is computed here from the
   int8 model's scale and zero point, so each tensor's error is its own, not
   the sum of everything quantized before it.
2. The ratio is taken per channel and the median reported. One huge outlier
   sets a tensor's scale; over the whole tensor it carries most of the signal
   and quantizes well, so the tensor-wide ratio looks fine while every other
   channel rounds to zero (about 0 dB). Per channel, that shows.

Each tensor is attributed to the layer that computes it (quantize.layer_of:
through ReLU, pooling and reshapes back to the conv or fc), and a layer's
error is the worst of its tensors'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from netc.compiler.optimizer.quantize import layer_of

MAX_DB = 99.0  # an exactly representable tensor
SAMPLES = 32  # images the activations are measured on


@dataclass(frozen=True)
class LayerError:
    layer: str
    sqnr_db: float  # median over channels of the layer's worst quantized tensor

    def __str__(self) -> str:
        return f"{self.layer} {self.sqnr_db:.1f} dB"


def layer_errors(
    float_model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    feed: dict[str, np.ndarray],
) -> list[LayerError]:
    """Every layer whose output the int8 model quantizes, worst first."""
    quantizers = _activation_quantizers(quantized)
    known = _float_values(float_model)
    names = [t for t in quantizers if t in known]
    if not names:
        return []
    values = _run_with_outputs(float_model, names, feed)
    worst: dict[str, float] = {}
    for tensor, value in zip(names, values):
        scale, zero_point = quantizers[tensor]
        sqnr = channel_sqnr(np.asarray(value, dtype=np.float32), scale, zero_point)
        layer = layer_of(float_model, tensor)
        worst[layer] = min(worst.get(layer, MAX_DB), sqnr)
    return sorted((LayerError(k, v) for k, v in worst.items()), key=lambda e: e.sqnr_db)


def fake_quantize(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """DequantizeLinear(QuantizeLinear(x)): round half to even, saturate, scale back."""
    info = np.iinfo(zero_point.dtype)
    zp = zero_point.astype(np.float32)
    q = np.clip(np.rint(x / scale) + zp, info.min, info.max)
    return ((q - zp) * scale).astype(np.float32)


def channel_sqnr(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> float:
    """Median over channels (axis 1) of the SQNR in dB of fake-quantizing `x`."""
    noise = fake_quantize(x, scale, zero_point) - x
    if x.ndim < 2:
        x, noise = x.reshape(1, 1, -1), noise.reshape(1, 1, -1)
    signal = np.square(x, dtype=np.float64).sum(axis=tuple(i for i in range(x.ndim) if i != 1))
    error = np.square(noise, dtype=np.float64).sum(axis=tuple(i for i in range(x.ndim) if i != 1))
    live = signal > 0
    if not live.any():
        return MAX_DB
    ratio = np.full(live.sum(), MAX_DB)
    noisy = error[live] > 0
    ratio[noisy] = np.minimum(MAX_DB, 10 * np.log10(signal[live][noisy] / error[live][noisy]))
    return float(np.median(ratio))


def _activation_quantizers(model: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Tensor name → (scale, zero point) for each QuantizeLinear of an activation."""
    stored = {t.name: t for t in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in stored or len(node.input) < 3:
            continue
        scale, zero_point = (stored.get(v) for v in node.input[1:3])
        if scale is None or zero_point is None:
            continue
        found[node.input[0]] = (
            numpy_helper.to_array(scale).astype(np.float32),
            numpy_helper.to_array(zero_point),
        )
    return found


def _float_values(model: onnx.ModelProto) -> set[str]:
    outputs = {o for node in model.graph.node for o in node.output}
    return outputs | {i.name for i in model.graph.input}


def _run_with_outputs(model: onnx.ModelProto, names: list[str], feed) -> list[np.ndarray]:
    """The values of `names` in `model` on `feed` (each added as a graph output)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for value in names:
        if value not in present:
            probe.graph.output.append(
                onnx.helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, None)
            )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(names, feed)

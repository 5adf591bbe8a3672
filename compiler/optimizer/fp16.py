"""FP16 for GPUs: onnxruntime's float16 converter, with ops unsafe in half precision kept in fp32.

`convert_float_to_float16` (onnxruntime.transformers.float16) turns weights
and activations into fp16 and inserts Casts around the ops it blocks. netc
blocks, beside the converter's own list, the ops whose intermediate sums
leave fp16's range (largest finite value 65504) or lose its 11 significant
bits on ConvNet data:

- LRN sums squares over channels (AlexNet, GoogLeNet): 256 values of 16
  already overflow;
- Softmax, LogSoftmax, Exp, Log, Pow: exponentials and logs of scores;
- ReduceSum, ReduceSumSquare, ReduceL2, ReduceLogSumExp, ReduceMean and
  GlobalLpPool: sums over whole feature maps.

Inputs and outputs stay fp32 unless asked (`keep_io_types`), so clients and
the server's preprocessing do not change. The result is verified like any
rewrite (verify.verify), on the CPU provider, with outputs compared at fp16's
tolerance (FP16_RTOL, FP16_ATOL·scale): about 10 steps of fp16's relative
precision, which rounding every layer's inputs and weights once adds up to
on a deep net, while a wrong conversion moves outputs by their own size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from netc.compiler.optimizer import verify
from netc.compiler.optimizer.quantize import quiet, set_metadata
from netc.errors import UserError
from netc.model_card import precision_props

UNSAFE_IN_FP16 = (
    "LRN",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Pow",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceMean",
    "GlobalLpPool",
)


def to_fp16(
    model: onnx.ModelProto, *, keep_io_types: bool = True, name: str = "the model"
) -> tuple[onnx.ModelProto, list[str]]:
    """(the fp16 model, names of the nodes kept in fp32 as unsafe)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    blocked = sorted({*DEFAULT_OP_BLOCK_LIST, *UNSAFE_IN_FP16})
    try:
        with quiet():
            half = convert_float_to_float16(
                model, keep_io_types=keep_io_types, op_block_list=blocked
            )
    except Exception as exc:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
        raise UserError(f"{name}: onnxruntime's float16 converter fails on it: {text}") from None
    kept = [node.name or node.op_type for node in model.graph.node if node.op_type in blocked]
    set_metadata(half, precision_props("fp16"))
    return half, kept


@dataclass(frozen=True)
class Fp16Check:
    ok: bool
    max_abs: float
    scale: float  # max(1, max |fp32 output|)
    input_shapes: list[dict[str, tuple[int, ...]]]
    worst: str = ""  # where the largest excess over the bound is, when not ok

    def summary(self) -> str:
        sizes = " and ".join(
            ", ".join(f"{list(s)}" for s in shapes.values()) for shapes in self.input_shapes
        )
        bound = f"rtol {verify.FP16_RTOL:g}, atol {verify.FP16_ATOL:g}·scale"
        if not self.ok:
            return f"outputs differ beyond fp16's tolerance ({bound}): {self.worst}"
        return (
            f"outputs match fp32 at input {sizes} within fp16's tolerance ({bound}; "
            f"max abs error {self.max_abs:.2g}, scale {self.scale:.3g}) on the CPU provider"
        )


def check_fp16(
    original: bytes,
    half: bytes,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    name: str = "the model",
) -> Fp16Check:
    """Both models on the verifier's seeded random inputs; every output within fp16's bound."""
    reference = verify._session(original, name)
    feeds = verify.input_feeds(reference, input_shapes=input_shapes)
    shapes = [{k: tuple(v.shape) for k, v in feed.items()} for feed in feeds]
    try:
        candidate = verify._session(half, "the optimized model")
    except Exception as exc:
        raise UserError(f"{name}: onnxruntime cannot load the fp16 model: {exc}") from None
    names = [o.name for o in reference.get_outputs()]
    worst_abs, worst_scale = 0.0, 1.0
    for feed, sizes in zip(feeds, shapes):
        expected = reference.run(None, feed)
        actual = candidate.run(None, {k: _as_input(candidate, k, v) for k, v in feed.items()})
        for output, want, got in zip(names, expected, actual):
            want = np.asarray(want, dtype=np.float64)
            got = np.asarray(got, dtype=np.float64)
            max_abs, _, index, excess = verify._elementwise(
                want, got, verify.FP16_RTOL, verify.FP16_ATOL
            )
            finite = np.abs(want[np.isfinite(want)])
            scale = max(1.0, float(finite.max())) if finite.size else 1.0
            worst_abs, worst_scale = max(worst_abs, max_abs), max(worst_scale, scale)
            if excess > 0:
                where = (
                    f"output {output!r}{list(index)} is {got[index]:.5g}, fp32 gives "
                    f"{want[index]:.5g} (inputs {sizes})"
                )
                return Fp16Check(False, max_abs, scale, shapes, where)
    return Fp16Check(True, worst_abs, worst_scale, shapes)


def _as_input(session, name: str, value: np.ndarray) -> np.ndarray:
    """The fp32 feed, as fp16 where the fp16 model takes fp16 inputs (keep_io_types off)."""
    for item in session.get_inputs():
        if item.name == name and item.type == "tensor(float16)":
            return value.astype(np.float16)
    return value

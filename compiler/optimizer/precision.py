"""`netc optimize --precision int8|fp16`: the fp32 pipeline, then reduced precision, checked.

    result = reduce_precision_file("lenet5.onnx", "lenet5.int8.onnx",
                                   PrecisionOptions("int8", calibrate="digits"))
    print(result.report())

The steps, in order:
1. the fp32 pipeline (api.optimize_model), verified elementwise as always:
   fused convs quantize faster and more accurately than conv + BN;
2. int8: calibration and held-out images from the data set (calibration),
   static QDQ quantization (quantize), the accuracy gate on the held-out
   images (accuracy); on failure the worst layers by quantization error
   (layer_errors) are named and nothing is written;
   fp16: conversion (fp16) and an elementwise check at fp16's tolerance;
3. the speed of both models in onnxruntime on this machine (`speed`).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

from netc.compiler.optimizer import accuracy, calibration
from netc.compiler.optimizer.api import (
    InputShapes,
    OptimizeResult,
    file_to_file,
    optimize_model,
    resolve_input_shapes,
)
from netc.compiler.optimizer.verify import VerificationError
from netc.errors import UserError

if TYPE_CHECKING:  # fp16 is imported when a model is reduced to fp16
    from netc.compiler.optimizer.fp16 import Fp16Check

PRECISIONS = ("fp32", "int8", "fp16")
SPEED_SECONDS = 2.0  # interleaved timing stops after this long (at least SPEED_MIN_ROUNDS)
SPEED_MIN_ROUNDS, SPEED_MAX_ROUNDS = 5, 50
WORST_SHOWN = 3


@dataclass
class PrecisionOptions:
    precision: str  # int8 | fp16
    calibrate: str | None = None  # data set (int8)
    method: str = "minmax"
    max_drop: float = accuracy.MAX_DROP
    keep_float: Sequence[str] = ()
    calibration_samples: int = calibration.CALIBRATION_SAMPLES
    split: tuple[float, int] | None = None  # held-out split; None: the model's own record
    fp16_io: bool = False  # fp16 inputs and outputs too
    measure_speed: bool = True


@dataclass
class Speed:
    fp32_ms: float
    reduced_ms: float
    rounds: int
    batch: int
    threads: int

    @property
    def ratio(self) -> float:
        return self.reduced_ms / self.fp32_ms


@dataclass
class PrecisionResult:
    precision: str
    fp32: OptimizeResult
    model: onnx.ModelProto
    data: bytes
    size_before: int
    gate: accuracy.GateResult | None = None
    fp16_check: Fp16Check | None = None
    kept_float: list[str] = field(default_factory=list)
    asked_float: list[str] = field(default_factory=list)
    speed: Speed | None = None
    calibrated_on: str = ""
    fp16_io: bool = False
    destination: str | None = None
    seconds: float = 0.0

    def report(self, verbose: bool = False) -> str:
        """The fp32 pipeline's report, then the reduced precision's size, speed and check."""
        head = self.fp32.source + (f" → {self.destination}" if self.destination else "")
        passes = self.fp32.report(verbose).splitlines()[1:]
        lines = [f"{head} ({self.seconds:.2f} s)", "fp32 pipeline:", *passes]
        return "\n".join([*lines, *self._precision_lines()])

    def _precision_lines(self) -> list[str]:
        lines = []
        if self.precision == "int8":
            lines.append(
                "int8: static QDQ quantization (onnxruntime): weights int8 per channel (7 bit), "
                f"activations uint8 calibrated on {self.calibrated_on}"
            )
            if self.kept_float:
                also = ", ".join(n for n in self.kept_float if n not in self.asked_float)
                with_them = (
                    f"; with them, what passes their output on or reads it: {also}" if also else ""
                )
                lines.append(f"  kept in float: {', '.join(self.asked_float)}{with_them}")
        else:
            lines.append(
                "fp16: weights and activations float16 (onnxruntime's converter), "
                + ("inputs and outputs fp16" if self.fp16_io else "inputs and outputs kept fp32")
            )
            if self.kept_float:
                lines.append(f"  kept in fp32 as unsafe in fp16: {', '.join(self.kept_float)}")
        lines.append(
            f"size {_size(self.size_before)} → {_size(len(self.data))} "
            f"({len(self.data) / max(1, self.size_before):.2f}×)"
        )
        if self.speed is not None:
            s = self.speed
            lines.append(
                f"speed: {self.precision} takes {s.ratio:.2f}× the fp32 time "
                f"({s.fp32_ms:.3g} → {s.reduced_ms:.3g} ms, {1 / s.ratio:.2f}× as fast) in "
                f"onnxruntime on this machine's CPU (ORT_ENABLE_ALL, {s.threads} threads, "
                f"batch {s.batch}, median of {s.rounds} interleaved runs)"
            )
            if s.ratio > 1 and self.precision == "int8":
                lines.append(
                    "  on this CPU the fp32 model is faster: quantizing and dequantizing "
                    "cost more than its small layers save"
                )
        if self.precision == "fp16":
            lines.append(
                "  fp16 is fast only on a GPU (CUDA or TensorRT provider); this CPU runs it "
                "through casts to fp32"
            )
        if self.gate is not None:
            lines.append("accuracy gate: " + self.gate.summary())
        if self.fp16_check is not None:
            lines.append("verified: " + self.fp16_check.summary())
        return lines


def reduce_precision_file(
    src: str | Path,
    dst: str | Path,
    options: PrecisionOptions,
    *,
    enable: Collection[str] = (),
    input_shapes: InputShapes | None = None,
) -> PrecisionResult:
    """Optimize `src` and reduce its precision into `dst`, written only when every check
    passed."""
    return file_to_file(
        src,
        dst,
        lambda proto, data: reduce_precision_model(
            proto,
            options,
            enable=enable,
            input_shapes=input_shapes,
            name=str(src),
            original_bytes=data,
        ),
    )


def reduce_precision_model(
    proto: onnx.ModelProto,
    options: PrecisionOptions,
    *,
    enable: Collection[str] = (),
    input_shapes: InputShapes | None = None,
    name: str = "the model",
    original_bytes: bytes | None = None,
) -> PrecisionResult:
    """The fp32 pipeline, then int8 or fp16; VerificationError when a check fails."""
    check_options(options)
    start = time.perf_counter()
    fp32 = optimize_model(
        proto, enable=enable, input_shapes=input_shapes, name=name, original_bytes=original_bytes
    )
    size = len(original_bytes) if original_bytes is not None else proto.ByteSize()
    if options.precision == "int8":
        result = _int8(fp32, options, name, size)
    else:
        result = _fp16(fp32, options, name, size, resolve_input_shapes(proto, input_shapes, name))
    result.seconds = time.perf_counter() - start
    return result


def check_options(options: PrecisionOptions) -> None:
    """UserErrors for options that do not go together, before any work."""
    from netc.compiler.optimizer.quantize import METHODS

    if options.precision not in ("int8", "fp16"):
        raise UserError(f"unknown precision {options.precision!r} (known: {', '.join(PRECISIONS)})")
    if options.precision == "int8":
        if not options.calibrate:
            raise UserError(
                "--precision int8 needs --calibrate DATASET: the images (as `netc train --data` "
                "takes them: digits, shapes, a folder, a .npz) to calibrate on and judge "
                "the int8 model with"
            )
        if options.method not in METHODS:
            raise UserError(
                f"unknown calibration method {options.method!r} (known: {', '.join(METHODS)})"
            )
        if not (0 <= options.max_drop <= 100):
            raise UserError(f"--max-drop {options.max_drop:g}: expected 0 to 100 points")
        if options.calibration_samples < 1:
            raise UserError("--calibration-samples must be at least 1")
    else:
        given = [
            flag
            for flag, value in (
                ("--calibrate", options.calibrate),
                ("--keep-float", options.keep_float),
            )
            if value
        ]
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise UserError(
                f"{' and '.join(given)} {verb} for --precision int8 only; fp16 is verified "
                "elementwise and keeps unsafe ops in fp32 itself"
            )


def _int8(fp32: OptimizeResult, options: PrecisionOptions, name: str, size: int):
    from netc.compiler.optimizer.layer_errors import SAMPLES, layer_errors
    from netc.compiler.optimizer.quantize import quantize

    assert options.calibrate is not None  # check_options refuses int8 without it
    samples = calibration.load_samples(
        fp32.model,
        options.calibrate,
        split=options.split,
        calibration_samples=options.calibration_samples,
        name=name,
    )
    quantized, float_model, kept = quantize(
        fp32.model,
        samples.calibration,
        method=options.method,
        keep_float=options.keep_float,
        input_name=samples.input_name,
        batch=min(samples.batch, 16),
        name=name,
    )
    data = quantized.SerializeToString()
    gate = accuracy.gate(fp32.data, data, samples, max_drop=options.max_drop)
    if not gate.ok:
        feed = {samples.input_name: samples.calibration[: min(SAMPLES, samples.batch)]}
        worst = layer_errors(float_model, quantized, feed)[:WORST_SHOWN]
        raise VerificationError(_gate_message(name, gate, worst, options.keep_float))
    calibrated_on = (
        f"{len(samples.calibration)} {samples.dataset} training-split images ({options.method})"
    )
    result = PrecisionResult(
        "int8",
        fp32,
        quantized,
        data,
        size,
        gate=gate,
        kept_float=kept,
        asked_float=list(options.keep_float),
        calibrated_on=calibrated_on,
    )
    if options.measure_speed:
        result.speed = measure_speed(fp32.data, data, samples.inputs[:1], samples.input_name)
    return result


def _gate_message(name: str, gate: accuracy.GateResult, worst, keep_float) -> str:
    lines = [
        f"{name}: the int8 model loses too much accuracy, so nothing was written: " + gate.summary()
    ]
    if worst:
        lines.append(
            "  worst layers (quantization error of each layer's output, signal-to-noise per "
            "channel, median; above 30 dB is healthy): " + ", ".join(map(str, worst))
        )
        names = [*keep_float, worst[0].layer]
        lines.append(
            f"  hint: keep the worst in float with --keep-float {','.join(names)}, "
            "or allow more with --max-drop"
        )
    return "\n".join(lines)


def _fp16(
    fp32: OptimizeResult,
    options: PrecisionOptions,
    name: str,
    size: int,
    input_shapes: Mapping[str, Sequence[int]] | None,
):
    from netc.compiler.optimizer.fp16 import check_fp16, to_fp16

    half, kept = to_fp16(fp32.model, keep_io_types=not options.fp16_io, name=name)
    data = half.SerializeToString()
    check = check_fp16(fp32.data, data, input_shapes=input_shapes, name=name)
    if not check.ok:
        raise VerificationError(
            f"{name}: the fp16 model computes something else, so nothing was written: "
            f"{check.summary()}"
        )
    result = PrecisionResult(
        "fp16", fp32, half, data, size, fp16_check=check, kept_float=kept, fp16_io=options.fp16_io
    )
    if options.measure_speed and check.input_shapes:
        shapes = check.input_shapes[0]
        feed_shape = next(iter(shapes.values()))
        x = np.random.default_rng(0).standard_normal((1, *feed_shape[1:])).astype(np.float32)
        result.speed = measure_speed(fp32.data, data, x, next(iter(shapes)))
    return result


def measure_speed(fp32: bytes, reduced: bytes, images: np.ndarray, input_name: str) -> Speed | None:
    """Median time of both models on `images`, interleaved round by round (ORT_ENABLE_ALL)."""
    sessions = [accuracy.session(fp32), accuracy.session(reduced)]
    feeds = [{input_name: _typed(s, input_name, images)} for s in sessions]
    for s, feed in zip(sessions, feeds):
        s.run(None, feed)
    times: list[list[float]] = [[], []]
    start = time.perf_counter()
    while len(times[0]) < SPEED_MAX_ROUNDS and (
        len(times[0]) < SPEED_MIN_ROUNDS or time.perf_counter() - start < SPEED_SECONDS
    ):
        for s, feed, spent in zip(sessions, feeds, times):
            began = time.perf_counter()
            s.run(None, feed)
            spent.append(1e3 * (time.perf_counter() - began))
    threads = sessions[0].get_session_options().intra_op_num_threads or os.cpu_count() or 1
    return Speed(
        statistics.median(times[0]),
        statistics.median(times[1]),
        len(times[0]),
        len(images),
        threads,
    )


def _typed(session: ort.InferenceSession, name: str, x: np.ndarray) -> np.ndarray:
    for item in session.get_inputs():
        if item.name == name and item.type == "tensor(float16)":
            return x.astype(np.float16)
    return x


def _size(count: int) -> str:
    if count >= 2**20:
        return f"{count / 2**20:.1f} MiB"
    return f"{count / 2**10:.1f} KiB"

"""Prove an optimization: run both models in onnxruntime on the same random inputs.

Both run on the CPU provider with onnxruntime's own graph optimizations off
(so it cannot hide or cause a difference), on seeded random inputs built
from the original model's input types. Open dims get concrete sizes: the
first (batch) dim 2, every other open dim each of `OPEN_SIZES` in turn, so a
rewrite that only holds at one spatial size is caught. Every output must
agree elementwise: |optimized − original| ≤ atol·scale + rtol·|original|,
where scale = max(1, max |original|) over that output.

Why atol grows with the output's scale: rounding error is carried by every
element at the size of the largest values it was computed from, not of its
own. ResNet-50 with non-trivial BN statistics has logits up to ~90; there
the *original* fp32 model differs from a float64 evaluation by 7e-5 on an
element of 0.13, so a bare atol of 1e-5 would reject a correct fold. Real
mistakes (a wrong axis, a bias folded around the mean) are errors of the
order of the output itself, far above 1e-5·scale. For outputs of order 1
the bound is exactly rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import onnx
import onnxruntime as ort

from netc.errors import UserError

RTOL, ATOL = 1e-4, 1e-5
# fp16 keeps 11 significant bits (relative step 9.8e-4): folding rounds the
# weights once more and reorders the rounding of the BN, which moves results by
# a few fp16 steps, so half-precision outputs are compared at about 10 steps.
FP16_RTOL, FP16_ATOL = 1e-2, 1e-2
BATCH = 2
OPEN_SIZES = (64, 96)  # multiples of 32, the total stride of most ConvNets

_HALF_TYPES = ("tensor(float16)", "tensor(bfloat16)")

# A model as onnxruntime can take it: its bytes, its proto, or (model_bytes.weightless*)
# its bytes without weights and the arrays its external initializers are, lent by reference.
Weightless = tuple[bytes, dict[str, np.ndarray]]
ModelSource = Union[bytes, onnx.ModelProto, Weightless]


class VerificationError(UserError):
    """The optimized model does not compute what the original computes."""


@dataclass(frozen=True)
class Mismatch:
    """The element of one output that is furthest from the original's."""

    output: str
    index: tuple[int, ...]
    actual: float
    expected: float
    input_shapes: dict[str, tuple[int, ...]]

    def __str__(self) -> str:
        shapes = ", ".join(f"{k} {list(v)}" for k, v in self.input_shapes.items())
        return (
            f"output {self.output!r}{list(self.index)} is {self.actual:.7g}, "
            f"expected {self.expected:.7g} (inputs {shapes})"
        )


@dataclass
class VerifyResult:
    ok: bool
    input_shapes: list[dict[str, tuple[int, ...]]]
    max_abs: float = 0.0
    max_rel: float = 0.0
    worst: Mismatch | None = None  # only when not ok
    error: str | None = None  # the optimized model failed to load or run
    tolerances: dict[str, tuple[float, float]] = field(default_factory=dict)

    def summary(self) -> str:
        sizes = " and ".join(
            ", ".join(f"{list(shape)}" for shape in shapes.values()) for shapes in self.input_shapes
        )
        if self.error:
            return f"the optimized model does not run: {self.error}"
        if not self.ok:
            return f"outputs differ: {self.worst}"
        return (
            f"outputs match at input {sizes}: max abs error {self.max_abs:.2g}, "
            f"max rel error {self.max_rel:.2g} (allowed: rtol {RTOL:g}, atol {ATOL:g}·scale"
            + (f"; fp16 outputs rtol {FP16_RTOL:g}, atol {FP16_ATOL:g})" if self._half() else ")")
        )

    def _half(self) -> bool:
        return any(t == (FP16_RTOL, FP16_ATOL) for t in self.tolerances.values())


@dataclass(frozen=True)
class Reference:
    """The original model's outputs on seeded inputs: what a candidate must reproduce."""

    feeds: list[dict[str, np.ndarray]]
    shapes: list[dict[str, tuple[int, ...]]]
    expected: list[list[np.ndarray]]
    names: list[str]
    types: list[str]


def run_reference(
    original: ModelSource,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    name: str = "the model",
) -> Reference:
    """Run the original on the check's inputs (`verify`'s first half; the optimizer runs it
    on a thread while its passes work, as onnxruntime leaves Python's lock free). Raises
    UserError when the original cannot be run."""
    reference = _session(original, name)
    feeds = input_feeds(reference, input_shapes=input_shapes, seed=seed)
    shapes = [{k: tuple(v.shape) for k, v in feed.items()} for feed in feeds]
    try:
        expected = [reference.run(None, feed) for feed in feeds]
    except Exception as exc:
        raise UserError(
            f"cannot verify {name}: onnxruntime fails to run it on inputs {shapes[0]}: "
            f"{_short(exc)}; give the input sizes with --input-shape, or skip the check "
            "with --no-verify"
        ) from None
    names = [o.name for o in reference.get_outputs()]
    types = [o.type for o in reference.get_outputs()]
    return Reference(feeds, shapes, expected, names, types)


def compare_to(reference: Reference, optimized: ModelSource) -> VerifyResult:
    """Run `optimized` on the reference's inputs and compare every output (`verify`'s
    second half); a failing optimized model is a failed result, not an exception."""
    try:
        candidate = _session(optimized, "the optimized model")
        actual = [candidate.run(None, feed) for feed in reference.feeds]
    except Exception as exc:
        return VerifyResult(ok=False, input_shapes=reference.shapes, error=_short(exc))
    return _compare(reference.names, reference.types, reference.expected, actual, reference.shapes)


def verify(
    original: ModelSource,
    optimized: ModelSource,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    name: str = "the model",
) -> VerifyResult:
    """Run both models on the same inputs and compare every output.

    `input_shapes` (name → full shape) replaces the open-size defaults with
    one size. Raises UserError when the *original* cannot be run (an op
    onnxruntime lacks, inputs it cannot take); a failing optimized model is
    a failed result, not an exception. One session at a time: each holds its
    own copy of a large model's weights.
    """
    reference = run_reference(original, input_shapes=input_shapes, seed=seed, name=name)
    return compare_to(reference, optimized)


def input_feeds(
    session: ort.InferenceSession,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
) -> list[dict[str, np.ndarray]]:
    """Seeded random inputs: one feed per size of the open dims."""
    inputs = session.get_inputs()
    unknown = set(input_shapes or {}) - {i.name for i in inputs}
    if unknown:
        known = ", ".join(i.name for i in inputs)
        raise UserError(f"--input-shape names no input {sorted(unknown)} (inputs: {known})")
    open_spatial = (
        any(not isinstance(d, int) for i in inputs for d in list(i.shape)[1:]) and not input_shapes
    )
    sizes = OPEN_SIZES if open_spatial else OPEN_SIZES[:1]
    rng = np.random.default_rng(seed)
    feeds = []
    for size in sizes:
        feed = {}
        for item in inputs:
            if input_shapes and item.name in input_shapes:
                shape = tuple(input_shapes[item.name])
            else:
                shape = tuple(_concrete(d, axis, size) for axis, d in enumerate(item.shape))
            feed[item.name] = _random(rng, item.type, shape)
        feeds.append(feed)
    return feeds


def _concrete(dim, axis: int, size: int) -> int:
    if isinstance(dim, int) and dim > 0:
        return dim
    return BATCH if axis == 0 else size


def _random(rng: np.random.Generator, type_: str, shape: tuple[int, ...]) -> np.ndarray:
    kind = type_.removeprefix("tensor(").removesuffix(")")
    if kind == "bool":
        return np.asarray(rng.random(shape) < 0.5)  # a 0-d array for a scalar, not np.bool_
    if kind.startswith(("int", "uint")):
        return rng.integers(0, 4, size=shape).astype(np.dtype(kind))
    if kind == "bfloat16":
        import ml_dtypes

        return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}.get(kind)
    if dtype is None:
        raise UserError(
            f"cannot make random inputs of type {type_}; skip the check with --no-verify"
        )
    return rng.standard_normal(shape).astype(dtype)


def _compare(names, types, expected, actual, shapes) -> VerifyResult:
    result = VerifyResult(ok=True, input_shapes=shapes)
    worst_excess = 0.0
    for run, (want_all, got_all) in enumerate(zip(expected, actual)):
        for name, type_, want, got in zip(names, types, want_all, got_all):
            rtol, atol = (FP16_RTOL, FP16_ATOL) if type_ in _HALF_TYPES else (RTOL, ATOL)
            result.tolerances[name] = (rtol, atol)
            want, got = np.asarray(want), np.asarray(got)
            if want.shape != got.shape or (want.dtype.kind not in "fiub" and want.size):
                if want.shape != got.shape or not np.array_equal(want, got):
                    result.ok, result.error = False, f"output {name!r} differs ({got.shape})"
                    return result
                continue
            max_abs, max_rel, index, excess = _elementwise(want, got, rtol, atol)
            result.max_abs, result.max_rel = (
                max(result.max_abs, max_abs),
                max(result.max_rel, max_rel),
            )
            if excess > worst_excess:
                worst_excess, result.ok = excess, False
                actual, wanted = float(got[index]), float(want[index])
                result.worst = Mismatch(name, index, actual, wanted, shapes[run])
    return result


def _elementwise(want, got, rtol: float, atol: float):
    """(max abs error, max rel error, index of the worst excess, that excess over the bound)."""
    if want.size == 0:
        return 0.0, 0.0, (), 0.0
    w, g = want.astype(np.float64), got.astype(np.float64)
    same = (w == g) | (np.isnan(w) & np.isnan(g))
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, an infinite error just below
        error = np.where(same, 0.0, np.abs(g - w))
    error = np.where(np.isnan(error), np.inf, error)
    finite = np.abs(w[np.isfinite(w)])
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    # relative error where it means something: where rtol, not atol, sets the bound
    sizable = np.abs(w) >= atol * scale / rtol
    max_rel = float((error[sizable] / np.abs(w[sizable])).max()) if sizable.any() else 0.0
    excess = error - (atol * scale + rtol * np.abs(np.nan_to_num(w)))
    index = np.unravel_index(int(np.argmax(excess)), excess.shape)
    return float(error.max()), max_rel, tuple(int(i) for i in index), float(excess[index])


RANDOM_OPS = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def check_deterministic(proto: onnx.ModelProto, name: str) -> None:
    """UserError when the model's output is random, so no two runs could agree."""
    random_op = _random_op(proto.graph)
    if random_op is not None:
        raise UserError(
            f"cannot verify {name}: its output is random ({random_op}), so two runs never "
            "agree; skip the check with --no-verify"
        )


def _random_op(graph: onnx.GraphProto) -> str | None:
    """A node that makes the output random: a random op, or a Dropout whose training_mode
    is not a constant false."""
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and node.op_type in RANDOM_OPS:
            return f"{node.op_type} node {node.name!r}"
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = constants.get(node.input[2])
            if mode is None or onnx.numpy_helper.to_array(mode).any():
                return f"Dropout node {node.name!r} in training mode"
    return None


def _session(model: ModelSource, name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    # Pre-packing copies every conv and Gemm weight into the layout its kernel likes:
    # seconds and a second copy of the weights on a 500 MB model, for a session that runs
    # once or twice. Both sessions of a check are made alike, so this cannot differ.
    options.add_session_config_entry("session.disable_prepacking", "1")
    weights: list[ort.OrtValue] = []
    if isinstance(model, tuple):
        data, arrays = model
        weights = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays.values()]
        if arrays:
            options.add_external_initializers(list(arrays), weights)
    else:
        data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        session._netc_weights = weights  # lent: kept alive with it
        return session
    except Exception as exc:
        if name == "the optimized model":
            raise
        raise UserError(
            f"cannot verify {name}: onnxruntime cannot load it: {_short(exc)}; "
            "skip the check with --no-verify"
        ) from None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 400 else text[:397] + "..."

"""Optimize an ONNX model or file: check it, run the pipeline, verify, write atomically.

    result = optimize_file("resnet18.onnx", "resnet18.opt.onnx")
    print(result.report(verbose=True))

On a verification failure nothing is written and a VerificationError names
the first pass after which the outputs no longer match.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol, TypeVar

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from netc.compiler.optimizer.base import OptimizerPass, PassReport
from netc.compiler.optimizer.model_bytes import (
    Originals,
    StoredTensor,
    light_model_bytes,
    load_ir,
    model_pieces,
    scan_initializers,
    weightless_ir,
    weightless_proto,
)
from netc.compiler.optimizer.pipeline import run_pipeline
from netc.compiler.optimizer.verify import (
    Reference,
    VerificationError,
    VerifyResult,
    check_deterministic,
    compare_to,
    run_reference,
)
from netc.compiler.optimizer.verify import verify as verify_model
from netc.errors import UserError
from netc.fileio import write_atomic

FREEZE_FLAG = "--freeze-initializer-inputs"
MAC_SIZE = 224  # open spatial dims when counting MACs saved, as torchvision's tables do
# --input-shape's shapes: input name (None: the model's only input) → full shape
InputShapes = Mapping[str | None, Sequence[int]]


class _Written(Protocol):
    """What `file_to_file` writes and records: a result with the model's bytes."""

    data: bytes
    destination: str | None
    seconds: float


R = TypeVar("R", bound=_Written)


@dataclass
class OptimizeResult:
    # the serialized optimized model (what is written), in pieces: a large model is
    # written piece by piece, never joined unless `data` is asked for
    pieces: list[bytes | memoryview]
    reports: list[PassReport]
    ops_before: Counter[str]
    ops_after: Counter[str]
    mac_input_shapes: dict[str, tuple[int, ...]]
    verification: VerifyResult | None = None
    source: str = "the model"
    frozen_inputs: list[str] = field(default_factory=list)  # --freeze-initializer-inputs
    initializer_inputs: int = 0  # initializers also graph inputs, left as inputs
    ir_versions: tuple[int, int] = (0, 0)  # before → after
    destination: str | None = None
    seconds: float = 0.0

    @cached_property
    def data(self) -> bytes:
        """The serialized optimized model."""
        return b"".join(self.pieces)

    @cached_property
    def model(self) -> onnx.ModelProto:
        """The optimized model, parsed from `data`."""
        return onnx.ModelProto.FromString(self.data)

    @property
    def size(self) -> int:
        return sum(len(piece) for piece in self.pieces)

    @property
    def nodes_before(self) -> int:
        return sum(self.ops_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.ops_after.values())

    @property
    def macs_saved(self) -> int:
        return sum(r.macs_saved for r in self.reports)

    def report(self, verbose: bool = False) -> str:
        """The printable summary: per pass what changed, totals, verification."""
        head = self.source + (f" → {self.destination}" if self.destination else "")
        lines = [f"{head} ({self.seconds:.2f} s)"]
        width = max((len(r.name) for r in self.reports), default=0)
        for r in self.reports:
            lines.extend(_pass_lines(r, width, verbose))
        bn = "BatchNormalization"
        shapes = ", ".join(f"{list(s)}" for s in self.mac_input_shapes.values())
        lines.append(
            f"nodes {self.nodes_before} → {self.nodes_after}; {bn} "
            f"{self.ops_before[bn]} → {self.ops_after[bn]}; "
            f"MACs saved {_count(self.macs_saved)} per run at input {shapes}"
        )
        if self.frozen_inputs:
            before, after = self.ir_versions
            raised = f"; IR version {before} → {after}" if after != before else ""
            lines.append(
                f"{len(self.frozen_inputs)} initializers are no longer graph inputs, so they "
                f"are constants ({FREEZE_FLAG}{raised})"
            )
        elif self.initializer_inputs:
            lines.append(
                f"{self.initializer_inputs} initializers are also graph inputs (the IR 3 layout), "
                f"so they can change at run time and nothing that reads them is folded; "
                f"{FREEZE_FLAG} makes them constants"
            )
        if self.verification is None:
            lines.append("not verified (--no-verify)")
        else:
            lines.append("verified: " + self.verification.summary())
        return "\n".join(lines)


def optimize_file(
    src: str | Path,
    dst: str | Path,
    *,
    verify: bool = True,
    enable: Collection[str] = (),
    verbose: bool = False,
    input_shapes: InputShapes | None = None,
    freeze_initializer_inputs: bool = False,
) -> OptimizeResult:
    """Optimize the ONNX file `src` into `dst`; `dst` is written only when all went well.

    `verbose` is accepted for symmetry with the CLI; `result.report(verbose)`
    renders either level of detail.
    """
    del verbose
    start = time.perf_counter()
    data = _read(Path(src))
    # The weights stay in `data`; protobuf parses only the rest (see model_bytes).
    stored = scan_initializers(data)
    light = data if stored is None else light_model_bytes(data, stored)
    writer = _WriteWhileVerifying(dst)
    try:
        result = optimize_model(
            parse_model(light, str(src)),
            verify=verify,
            enable=enable,
            input_shapes=input_shapes,
            name=str(src),
            original_bytes=data,
            freeze_initializer_inputs=freeze_initializer_inputs,
            _before_verify=writer.start,
        )
    except BaseException:
        writer.finish(keep=False)
        raise
    writer.finish(keep=True)
    result.destination = str(dst)
    result.seconds = time.perf_counter() - start
    return result


class _Abandoned(Exception):
    """The verification failed: the written file must not replace the destination."""


class _WriteWhileVerifying:
    """Writes the optimized model in a thread while onnxruntime verifies it, and renames
    it over the destination only when the verification passed: on a large model the
    write (seconds of copying and fsync) and the check overlap, and a failed check still
    writes nothing (write_atomic's before_rename waits for the verdict)."""

    def __init__(self, dst: str | Path) -> None:
        self.dst = dst
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.verdict = threading.Event()
        self.keep = False

    def start(self, pieces: list[bytes | memoryview]) -> None:
        self.thread = threading.Thread(target=self._write, args=(pieces,), daemon=True)
        self.thread.start()

    def _write(self, pieces: list[bytes | memoryview]) -> None:
        try:
            write_atomic(self.dst, pieces, before_rename=self._wait)
        except BaseException as exc:  # handed to finish(), in the caller's thread
            self.error = exc

    def _wait(self) -> None:
        self.verdict.wait()
        if not self.keep:
            raise _Abandoned

    def finish(self, keep: bool) -> None:
        """Rename the file into place (keep) or remove it; raise what the write raised."""
        self.keep = keep
        self.verdict.set()
        if self.thread is None:
            return
        self.thread.join()
        if keep and self.error is not None:
            raise self.error


def file_to_file(
    src: str | Path, dst: str | Path, transform: Callable[[onnx.ModelProto, bytes], R]
) -> R:
    """Read and parse `src`, `transform(proto, its bytes)`, write the result's `data` to
    `dst` atomically (nothing when the transform raised), and record where and how long."""
    start = time.perf_counter()
    data = _read(Path(src))
    result = transform(parse_model(data, str(src)), data)
    write_atomic(dst, result.data)
    result.destination = str(dst)
    result.seconds = time.perf_counter() - start
    return result


def optimize_model(
    proto: onnx.ModelProto,
    *,
    verify: bool = True,
    enable: Collection[str] = (),
    input_shapes: InputShapes | None = None,
    name: str = "the model",
    original_bytes: bytes | None = None,
    passes: Sequence[type[OptimizerPass]] | None = None,
    freeze_initializer_inputs: bool = False,
    _before_verify: Callable[[list[bytes | memoryview]], None] | None = None,
) -> OptimizeResult:
    """Optimize a loaded model; `proto` is left unchanged.

    `original_bytes`, when given, is the file `proto` was read from, or the file of
    which `proto` is the light form (model_bytes.light_model_bytes): the weights are
    read from these bytes, never from `proto`.

    `input_shapes` (input name, None for the only one → full shape) fixes
    the sizes used for the verification run and the MAC counts. `passes`
    replaces the pipeline (tests). `freeze_initializer_inputs` first removes
    initializers from the graph inputs (IR 3 lists every one there, which
    makes them run-time inputs that no fold may touch) and raises the IR
    version to 4, where an initializer need not be an input. Raises UserError
    for a model netc cannot take and VerificationError when the optimized
    model computes something else.
    """
    start = time.perf_counter()
    # One serialized form serves the checker, the search for each initializer's bytes and
    # the verification: whole-model serializations and raw_data copies are what a large
    # model's time goes to (see model_bytes).
    data = original_bytes if original_bytes is not None else _serialize(proto, name)
    stored = scan_initializers(data)
    if stored is not None and [t.name for t in stored] != [t.name for t in proto.graph.initializer]:
        stored = None  # not the bytes of this proto: no shortcuts
    resolved = resolve_input_shapes(proto, input_shapes, name)
    reference = None
    if verify:
        check_deterministic(proto, name)
        # The original's run does not depend on the passes: it goes on a thread while they
        # work (onnxruntime leaves Python's lock free), the check's longest part on a
        # large model. Its weights are views of `data`, shared with the passes' reads.
        def original_outputs() -> Reference:
            source = weightless_proto(proto, data, stored) if stored is not None else data
            return run_reference(source, input_shapes=resolved, name=name)

        reference = _Background(original_outputs)
    # While the original runs; a model the checker refuses is refused first (the thread's
    # own failure on it is never asked for).
    check_model(proto, name, data=data, stored=stored)
    model, originals = _load_ir(proto, data, stored, name)
    ops_before = Counter(node.op_type for node in model.graph)
    ir_before = model.ir_version
    frozen = freeze_inputs(model) if freeze_initializer_inputs else []
    mac_shapes = _mac_shapes(model, resolved)
    reports = run_pipeline(model, enable=enable, passes=passes, static_input_shapes=mac_shapes)
    pieces = model_pieces(model, originals)
    if sum(len(piece) for piece in pieces) >= 2**31:
        raise UserError(f"{name}: the optimized model cannot be serialized: over protobuf's 2 GB")
    result = OptimizeResult(
        pieces=pieces,
        reports=reports,
        ops_before=ops_before,
        ops_after=Counter(node.op_type for node in model.graph),
        mac_input_shapes=mac_shapes,
        source=name,
        frozen_inputs=frozen,
        initializer_inputs=sum(1 for v in model.graph.inputs if v.is_initializer()),
        ir_versions=(ir_before, model.ir_version),
    )
    if _before_verify is not None:  # optimize_file: the write starts, and waits on the check
        _before_verify(pieces)
    if reference is not None:
        # Both models go to onnxruntime without their weights, which it takes by
        # reference from the arrays: unchanged ones are views of `data`, shared by both.
        result.verification = compare_to(reference.result(), weightless_ir(model, originals))
        if not result.verification.ok:
            culprit = find_faulty_pass(
                proto, data, enable, passes, resolved, name, freeze_initializer_inputs
            )
            raise VerificationError(
                f"{name}: the optimized model computes something else, so nothing was "
                f"written: {result.verification.summary()}; first wrong after pass {culprit}. "
                "This is a bug in netc; --no-verify skips the check"
            )
    result.seconds = time.perf_counter() - start
    return result


class _Background:
    """`function()` (the original's run) on a thread; `result()` waits for it and returns
    its value or raises its exception (a UserError when the original cannot be run)."""

    def __init__(self, function: Callable[[], Reference]) -> None:
        self._value: Reference | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = function()
            except BaseException as exc:  # handed to the caller by result()
                self._error = exc

        self._thread = threading.Thread(target=run, name="netc-verify-reference", daemon=True)
        self._thread.start()

    def result(self) -> Reference:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def find_faulty_pass(
    proto: onnx.ModelProto,
    original: bytes,
    enable: Collection[str],
    passes: Sequence[type[OptimizerPass]] | None,
    input_shapes: Mapping[str, Sequence[int]] | None,
    name: str,
    freeze_initializer_inputs: bool = False,
) -> str:
    """Re-run the pipeline on a fresh copy, verifying after every pass; the first that breaks."""
    found: list[str] = []

    def check(pass_: OptimizerPass, model: ir.Model) -> None:
        if found:
            return
        data = ir.to_proto(model).SerializeToString()
        if not verify_model(original, data, input_shapes=input_shapes, name=name).ok:
            found.append(pass_.name)

    model, _ = _load_ir(proto, original, scan_initializers(original), name)
    if freeze_initializer_inputs:
        freeze_inputs(model)
    run_pipeline(model, enable=enable, passes=passes, after_each=check)
    return found[0] if found else "(none alone: the whole pipeline)"


def _load_ir(
    proto: onnx.ModelProto, data: bytes, stored: Sequence[StoredTensor] | None, name: str
) -> tuple[ir.Model, Originals | None]:
    """The IR model, its large initializers views of `data` when `stored` locates them."""
    try:
        if stored is not None:
            return load_ir(proto, data, stored)
        return ir.from_proto(proto), None
    except Exception as exc:
        raise UserError(f"{name}: not a well-formed ONNX model: {exc}") from None


def freeze_inputs(model: ir.Model) -> list[str]:
    """Make every initializer that is also a graph input a constant: drop it from the inputs
    and raise the IR version to 4 (IR 3 requires every initializer to be an input, so an
    IR 3 file without them fails onnx's checker). The names of the inputs dropped."""
    frozen = [v for v in model.graph.inputs if v.is_initializer()]
    if frozen:
        kept = [v for v in model.graph.inputs if not v.is_initializer()]
        model.graph.inputs.clear()
        model.graph.inputs.extend(kept)
        model.ir_version = max(model.ir_version, 4)
    return [v.name or "" for v in frozen]


def parse_model(data: bytes, name: str) -> onnx.ModelProto:
    """Bytes → ModelProto, or a UserError saying why these bytes are not an ONNX model."""
    if not data:
        raise UserError(f"{name}: the file is empty, not an ONNX model")
    try:
        return onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"{name}: not an ONNX model, or a truncated one (protobuf cannot parse it: {exc})"
        ) from None


def check_model(
    proto: onnx.ModelProto,
    name: str,
    *,
    data: bytes | None = None,
    stored: Sequence[StoredTensor] | None = None,
) -> None:
    """The checks that make a model safe to rewrite; UserError naming the problem.

    `data`, the proto's serialized form, and `stored`, where its initializers lie in
    it, spare the checks a serialization and a copy of every initializer's data."""
    graph = proto.graph
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise UserError(f"{name}: not an ONNX model (no IR version or no graph)")
    if not proto.opset_import:
        raise UserError(f"{name}: no opset_import: a truncated or malformed ONNX file")
    external = [t.name for t in _tensors(graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise UserError(
            f"{name}: its weights are in external data files ({external[0]!r}"
            f"{f' and {len(external) - 1} more' if len(external) > 1 else ''}); netc optimize "
            "takes self-contained models: re-save it with "
            "onnx.save(onnx.load(path), out, save_as_external_data=False) (under 2 GB)"
        )
    names = {t.name for t in graph.initializer}
    if not [i for i in graph.input if i.name not in names]:
        raise UserError(f"{name}: the model has no inputs, so there is nothing to run it on")
    if not graph.output:
        raise UserError(f"{name}: the model has no outputs: a truncated or malformed ONNX file")
    _check_defined(proto, name, names)
    raw_sizes = {t.name: t.raw_size for t in stored} if stored is not None else {}
    _check_tensor_sizes(graph.initializer, name, raw_sizes)
    _check_with_onnx(proto, name, data)


def _tensors(graph: onnx.GraphProto):
    """Every tensor the graph stores: initializers, and tensors inside node attributes
    (a Constant's value, a subgraph's weights), where external data could also point."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for sub in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _tensors(sub)


def _check_with_onnx(proto: onnx.ModelProto, name: str, data: bytes | None = None) -> None:
    """onnx's own checker: attribute types, tensor sizes, unique names, required inputs,
    opset range. A graph input or output without a shape (which onnxruntime accepts) and
    ops onnx does not know (passed through untouched) are not held against the model."""
    shapeless = _shapeless(proto)
    if shapeless and data is not None:  # `proto` may be light: check the whole model
        proto = onnx.ModelProto.FromString(data)
        shapeless = _shapeless(proto)
    try:  # shapes lent for the check only, not a copy of the whole model and its weights
        for tensor in shapeless:
            tensor.shape.SetInParent()
        # the bytes when they are the model as checked: the checker would serialize it
        onnx.checker.check_model(data if data is not None and not shapeless else proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reason.startswith("No Op registered for"):
            return  # an op onnx does not know: left alone, and verification says so
        raise UserError(f"{name}: not a valid ONNX model: {reason}") from None
    finally:
        for tensor in shapeless:  # the model as it came: `proto` is left unchanged
            tensor.ClearField("shape")


def _shapeless(proto: onnx.ModelProto) -> list[onnx.TypeProto.Tensor]:
    return [
        value.type.tensor_type
        for value in (*proto.graph.input, *proto.graph.output)
        if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape")
    ]


def resolve_input_shapes(
    proto: onnx.ModelProto, given: InputShapes | None, name: str
) -> dict[str, tuple[int, ...]] | None:
    """Check user-given input shapes against the model; a None key means its only input."""
    if not given:
        return None
    stored = {t.name for t in proto.graph.initializer}
    inputs = {i.name: i for i in proto.graph.input if i.name not in stored}
    resolved = {}
    for key, shape in given.items():
        if key is None:
            if len(inputs) != 1:
                raise UserError(
                    f"{name}: the model has inputs {sorted(inputs)}; say which one a shape is "
                    "for (NAME=D0,D1,...)"
                )
            key = next(iter(inputs))
        if key not in inputs:
            raise UserError(f"{name}: no input named {key!r} (inputs: {', '.join(inputs)})")
        dims = inputs[key].type.tensor_type.shape.dim
        if dims and len(dims) != len(shape):
            raise UserError(
                f"{name}: input {key!r} has {len(dims)} dims, the shape given has {len(shape)}"
            )
        fixed = [(i, d.dim_value) for i, d in enumerate(dims) if d.HasField("dim_value")]
        for axis, size in fixed:
            if shape[axis] != size:
                raise UserError(
                    f"{name}: input {key!r} has size {size} on axis {axis}, "
                    f"the shape given has {shape[axis]}"
                )
        resolved[key] = tuple(shape)
    return resolved


def _check_defined(proto: onnx.ModelProto, name: str, stored: set[str]) -> None:
    defined = {i.name for i in proto.graph.input} | stored | {""}
    for index, node in enumerate(proto.graph.node):
        for value in node.input:
            if value not in defined:
                raise UserError(
                    f"{name}: node {index} ({node.op_type} {node.name!r}) reads {value!r}, "
                    "which nothing before it defines: a truncated or malformed model"
                )
        defined.update(node.output)
    missing = [o.name for o in proto.graph.output if o.name not in defined]
    if missing:
        raise UserError(f"{name}: graph output {missing[0]!r} is not computed by any node")


def _check_tensor_sizes(tensors, name: str, raw_sizes: Mapping[str, int]) -> None:
    """Each raw_data holds what its shape needs; `raw_sizes` (name → size) saves reading
    raw_data, which protobuf copies on every read."""
    for tensor in tensors:
        size = raw_sizes.get(tensor.name)
        if size is None:
            size = len(tensor.raw_data)
        if not size:
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            continue
        expected = math.prod(tensor.dims) * itemsize
        if itemsize >= 1 and size != expected:
            raise UserError(
                f"{name}: initializer {tensor.name!r} holds {size} bytes, "
                f"its shape {list(tensor.dims)} needs {expected}: a truncated or malformed model"
            )


def _mac_shapes(
    model: ir.Model, given: Mapping[str, Sequence[int]] | None
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes for MAC counts: `given`, else batch 1 and open sizes MAC_SIZE."""
    shapes = {}
    for value in model.graph.inputs:
        if value.is_initializer() or value.name is None:  # onnx's checker names every input
            continue
        if given and value.name in given:
            shapes[value.name] = tuple(given[value.name])
        elif value.shape is not None:
            shapes[value.name] = tuple(
                d if isinstance(d, int) else (1 if axis == 0 else MAC_SIZE)
                for axis, d in enumerate(value.shape.dims)
            )
    return shapes


def _serialize(proto: onnx.ModelProto, name: str) -> bytes:
    try:
        return proto.SerializeToString()
    except ValueError as exc:  # protobuf's 2 GB limit
        raise UserError(f"{name}: the optimized model cannot be serialized: {exc}") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not an ONNX file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it: {exc.strerror}") from None


def _pass_lines(report: PassReport, width: int, verbose: bool) -> list[str]:
    removed = report.nodes_before - report.nodes_after
    facts = []
    if report.notes:
        facts.append(f"{len(report.notes)} changes")
    if removed:
        facts.append(f"{removed} nodes removed" if removed > 0 else f"{-removed} nodes added")
    if report.macs_saved:
        facts.append(f"{_count(report.macs_saved)} MACs saved")
    if report.refusals:
        facts.append(f"{len(report.refusals)} refused")
    head = f"  {report.name:<{width}}  {', '.join(facts) or 'no change'}"
    if verbose:
        return (
            [head]
            + [f"      {note}" for note in report.notes]
            + [f"      refused: {why}" for why in report.refusals]
        )
    if not report.notes:
        return [head]
    shown = ", ".join(report.notes[:3])
    more = len(report.notes) - 3
    return [head, f"      {shown}" + (f", ... (+{more}; --verbose lists all)" if more > 0 else "")]


def _count(n: int) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= size:  # a rewrite may add work (fully_convolutional): -22.09M
            return f"{n / size:.2f}{suffix}"
    return str(n)

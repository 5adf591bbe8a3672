"""One loaded model version: an onnxruntime session, its description, its batcher.

Requests are checked here, before they queue, so every mistake is reported
against the tensor it concerns: unknown or missing inputs, wrong datatypes,
ranks and sizes, batches larger than the model allows.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

from netc.errors import InternalError, UserError
from netc.model_card import ModelCard
from netc.protos.generated import grpc_service_pb2 as pb
from netc.serving.batcher import DRAIN_S, Batcher
from netc.serving.batching_tensors import CheckedRequest, Tensors
from netc.serving.config import ModelConfig
from netc.serving.errors import InvalidRequest, ModelFailed, QueueFull, clip
from netc.serving.model_info import DATATYPES, ONNX_TYPES, ModelInfo, TensorSpec
from netc.serving.stats import ModelStats, RequestTimes
from netc.serving.tensors import common_request, decode_inputs

WARMUP_SIZE = 64  # spatial size used to warm up models whose H and W are open
SMALL_MODEL_NS = 1_000_000  # below this warm-up run time a model runs single-threaded


# onnxruntime's own log lines (stderr) say again what netc reports in its own words: a
# model that cannot load or run is an exception netc words for the client and the
# repository index; the rest is noise to a user (an unused initializer at every load)
# or is said by netc (a CUDA provider that did not start). NETC_DEBUG=1 shows them.
ORT_WARNING, ORT_FATAL = 2, 4


def ort_log_level() -> int:
    return ORT_WARNING if os.environ.get("NETC_DEBUG") else ORT_FATAL


# An ONNX model of one Identity node on a float[1], to ask onnxruntime whether its CUDA
# provider starts (onnx.helper.make_model of it, opset 13, IR 7, serialized).
PROBE_MODEL = (
    b'\x08\x07\x12\x00:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x'
    b"\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04"
    b"\n\x02\x08\x01B\x04\n\x00\x10\r"
)
CUDA = "CUDAExecutionProvider"


def providers() -> list[str]:
    """CUDA when onnxruntime's CUDA provider really starts here, else the CPU."""
    return [CUDA, "CPUExecutionProvider"] if _cuda_works() else ["CPUExecutionProvider"]


@functools.cache  # once a process: ~20 ms, and the answer does not change
def _cuda_works() -> bool:
    """Ask onnxruntime itself, not torch (which the server must not import: 100 MiB and
    over a second of start-up). onnxruntime-gpu lists its CUDA provider with or without
    a GPU, so a one-node session tries it; its own error lines stay quiet (`ort_log_level`).
    A GPU the driver sees but onnxruntime cannot use is said once (`_fell_back`)."""
    if CUDA not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(ort_log_level())
    options = ort.SessionOptions()
    options.log_severity_level = ort_log_level()
    try:
        probe = ort.InferenceSession(PROBE_MODEL, options, providers=[CUDA, "CPUExecutionProvider"])
        works = CUDA in probe.get_providers()
    except Exception:  # onnxruntime raises many kinds
        works = False
    if not works and _gpu_devices() > 0:
        _fell_back(CUDA)
    return works


def _gpu_devices() -> int:
    """How many GPUs the CUDA driver sees (0 without a driver)."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
    except (OSError, AttributeError):
        return 0
    return count.value


def session_options(config: ModelConfig) -> ort.SessionOptions:
    """The onnxruntime options a served model runs with (bench/serve.py measures them too)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = ort_log_level()
    if config.intra_op_threads:
        options.intra_op_num_threads = config.intra_op_threads
    # onnxruntime's threads spin between a run's parallel sections (its default). A model
    # small enough to starve the event loop that way runs single-threaded (`warm_up`),
    # where nothing spins; for resnet18 spinning measured 0.1-0.5 ms faster at one client
    # and the same at 16 (12.07-12.23 against 11.75-11.94 ms p50, 94-96 req/s both).
    return options


def _dims(shape: list[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def describe(
    name: str, version: str, session: ort.InferenceSession, config: ModelConfig
) -> ModelInfo:
    """The model as clients see it, from the session and the netc metadata."""
    ins, outs = session.get_inputs(), session.get_outputs()
    for tensor in (*ins, *outs):
        if tensor.type not in ONNX_TYPES:
            raise UserError(
                f"model '{name}': tensor '{tensor.name}' has type "
                f"{tensor.type}, which the server cannot carry"
            )
    batched = config.max_batch_size > 0 and all(
        t.shape and not isinstance(t.shape[0], int) for t in (*ins, *outs)
    )
    cut = 1 if batched else 0
    meta = _metadata(session)
    card = ModelCard.from_props(meta)  # what does not fit its key reads as absent
    labels = config.labels or card.labels
    return ModelInfo(
        name=name,
        version=version,
        inputs=tuple(TensorSpec(t.name, ONNX_TYPES[t.type], _dims(t.shape[cut:])) for t in ins),
        outputs=tuple(TensorSpec(t.name, ONNX_TYPES[t.type], _dims(t.shape[cut:])) for t in outs),
        max_batch_size=config.max_batch_size if batched else 0,
        task=card.task or "unknown",
        labels=tuple(str(label) for label in labels) if labels else None,
        preprocessing=card.preprocessing,
        output_stride=card.output_stride,
        output_offset=card.output_offset,
        dynamic_batching=batched and config.dynamic_batching,
        preferred_batch_sizes=config.preferred_batch_sizes,
        max_queue_delay_us=config.max_queue_delay_us,
        metadata=meta,
        precision=_precision(card, ins, outs),
    )


def _precision(card: ModelCard, ins, outs) -> str:
    """What `netc optimize --precision` recorded (netc.precision), else what the tensors
    show: fp16 when an input or output is. (A model quantized by another tool, with fp32
    inputs and outputs, reads as fp32.)"""
    if card.precision is not None:
        return card.precision
    return "fp16" if any(t.type == "tensor(float16)" for t in (*ins, *outs)) else "fp32"


class ServedModel:
    """A loaded model version that checks, queues, batches and runs requests."""

    def __init__(self, name: str, version: str, path: Path, config: ModelConfig) -> None:
        # Execution providers log through the default logger, not the session's.
        ort.set_default_logger_severity(ort_log_level())
        wanted = providers()
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(config), providers=wanted
            )
        except Exception as exc:  # onnxruntime raises many kinds
            raise UserError(
                f"model '{name}' version {version}: onnxruntime cannot load {path}: {exc}"
            ) from None
        if wanted[0] not in self.session.get_providers():
            _fell_back(wanted[0])
        self.name, self.version, self.path, self.config = name, version, path, config
        self.info = describe(name, version, self.session, config)
        self.stats = ModelStats(name, version)
        self.output_names = [spec.name for spec in self.info.outputs]
        self.every_output = [(name, 0) for name in self.output_names]  # (name, top k: none)
        # what `check` compares each request against, built once
        self.expected = {
            spec.name: (spec, np.dtype(DATATYPES[spec.datatype])) for spec in self.info.inputs
        }
        self.batcher: Batcher | None = None

    def start(self) -> None:
        """Create the batcher (needs the running event loop)."""
        info = self.info
        delay = info.max_queue_delay_us
        self.batcher = Batcher(
            f"{self.name}/{self.version}",
            self._run,
            batching=info.dynamic_batching,
            max_batch=max(1, info.max_batch_size),
            max_delay_s=None if delay is None else delay / 1e6,
            preferred=info.preferred_batch_sizes,
            max_queue=self.config.max_queue_size,
            refusals_per_second=self.config.refusals_per_second,
            instances=self.config.instances,
            stats=self.stats,
        )

    def _run(self, inputs: Tensors) -> Tensors:
        try:
            values = self.session.run(self.output_names, inputs)
        except ort_errors.InvalidArgument as exc:
            # Shapes the declared dims allow but the network cannot take (an open-size input
            # smaller than its receptive field): the request's fault, not the server's.
            shapes = ", ".join(f"'{name}' {list(value.shape)}" for name, value in inputs.items())
            reason = str(exc).rsplit("Status Message:", 1)[-1].strip()
            raise InvalidRequest(
                f"model '{self.name}' cannot run on input {shapes}: {reason}"
            ) from None
        except (ort_errors.RuntimeException, ort_errors.Fail, ort_errors.EPFail) as exc:
            raise ModelFailed(
                f"model '{self.name}' failed on this request: {_failed_node(exc)}"
            ) from None
        return dict(zip(self.output_names, values))

    def warm_up(self) -> None:
        """One run on zeros, so the first client does not pay for lazy initialisation."""
        batch = (1,) if self.info.max_batch_size else ()
        pre = self.info.preprocessing
        size = (pre.input_size if pre is not None else None) or ()
        inputs = {}
        for spec in self.info.inputs:
            dims = list(spec.dims)
            if not batch and len(dims) == 4 and dims[0] < 0:
                dims[0] = 1  # a picture batch the server does not batch: one picture
            open_dims = [i for i, d in enumerate(dims) if d < 0]
            for n, i in enumerate(open_dims):
                given = size[n] if n < len(size) else None
                dims[i] = given or WARMUP_SIZE
            inputs[spec.name] = _filler((*batch, *dims), spec.datatype)
        try:
            self._run(inputs)
            runs = []
            for _ in range(5):
                start = time.perf_counter_ns()
                self._run(inputs)
                runs.append(time.perf_counter_ns() - start)
        except Exception:  # a model may reject zeros or our guess at sizes
            return
        if self.config.intra_op_threads == 0 and sorted(runs)[2] < SMALL_MODEL_NS:
            self._single_threaded()

    def _single_threaded(self) -> None:
        """Rebuild the session with one intra-op thread: for a model that runs in well under a
        millisecond, waking a second thread costs more than it saves, and the core it would
        take is the one gRPC and the event loop need (measured on LeNet at 16 concurrent
        requests: 90 → 55 µs per run, +5-10 % requests per second)."""
        options = session_options(replace(self.config, intra_op_threads=1))
        self.session = ort.InferenceSession(str(self.path), options, providers=providers())

    async def admit(self) -> None:
        """Refuse what queueing would refuse (a full queue, a closing model) before the
        request is decoded and checked; a full queue's refusal waits its turn when
        refusals come faster than `refusals_per_second` (batching_policy.RefusalPace)."""
        if self.batcher is None:
            return
        try:
            self.batcher.admit()
        except QueueFull as refusal:
            await self.batcher.paced(refusal)

    def checked(self, request: pb.ModelInferRequest) -> CheckedRequest:
        """A ModelInferRequest decoded and checked: the request path's one decoder (gRPC's
        ModelInfer and ModelStreamInfer use it). The common request (one fixed-size
        input, sent raw) is decoded and checked in one pass; any other is first judged by
        its input headers, then decoded and checked, and a mistake is named."""
        common = common_request(request, self.expected, self.info.max_batch_size)
        if common is not None:
            return common
        self._check_declared(request.inputs)
        return self.check(decode_inputs(request))

    def _check_declared(self, declared) -> None:
        """What the request's input headers (name, datatype) already tell, before any data is
        decoded: a request with a million inputs, or megabytes of BYTES the model does not
        take, is refused at its first wrong input, not after decoding them all. The
        messages are `check`'s."""
        expected, seen = self.expected, set()
        for tensor in declared:
            name = tensor.name
            entry = expected.get(name)
            if entry is None:
                raise self._unexpected(name)
            if name in seen:
                raise InvalidRequest(f"input '{clip(name)}' appears more than once in the request")
            seen.add(name)
            spec = entry[0]
            if tensor.datatype != spec.datatype and tensor.datatype in DATATYPES:
                raise self._wrong_datatype(name, tensor.datatype, spec)

    def _unexpected(self, name: str) -> InvalidRequest:
        return InvalidRequest(
            f"model '{self.name}': unexpected input '{clip(name)}'; the "
            f"model's inputs are {', '.join(self.expected)}"
        )

    def _wrong_datatype(self, name: str, found: str, spec: TensorSpec) -> InvalidRequest:
        return InvalidRequest(
            f"model '{self.name}': input '{name}' has datatype {found}, expected {spec.datatype}"
        )

    def check(self, inputs: Tensors) -> CheckedRequest:
        """Validate a request's decoded inputs: its batch size and batching key with them."""
        expected = self.expected
        for name in inputs:
            if name not in expected:
                raise self._unexpected(name)
        batch, key = 1, []
        max_batch = self.info.max_batch_size
        for name, (spec, want) in expected.items():
            value = inputs.get(name)
            if value is None:
                raise InvalidRequest(
                    f"model '{self.name}': missing input '{name}' "
                    f"({spec.datatype} {list(spec.dims)})"
                )
            if value.dtype != want:
                raise self._wrong_datatype(name, _type_name(value.dtype), spec)
            shape = value.shape
            if max_batch:
                if len(shape) != len(spec.dims) + 1:
                    raise InvalidRequest(
                        f"model '{self.name}': input '{name}' has shape {list(shape)}, "
                        f"expected [batch, {', '.join(map(str, spec.dims))}] (rank "
                        f"{len(spec.dims) + 1})"
                    )
                batch = shape[0]
                if not 1 <= batch <= max_batch:
                    raise InvalidRequest(
                        f"model '{self.name}': input '{name}' batch size {batch} is outside "
                        f"1..{max_batch} (max_batch_size)"
                    )
                shape = shape[1:]
            if shape != spec.dims and (  # equal: a fixed-size input, the common case
                len(shape) != len(spec.dims)
                or any(d >= 0 and d != s for d, s in zip(spec.dims, shape))
            ):
                raise InvalidRequest(
                    f"model '{self.name}': input '{name}' has shape {list(value.shape)}, "
                    f"expected {self._shape_text(spec)}"
                )
            key.append((name, shape))
        return CheckedRequest(inputs, batch, tuple(key))

    def _shape_text(self, spec: TensorSpec) -> str:
        dims = ", ".join("?" if d < 0 else str(d) for d in spec.dims)
        return f"[batch, {dims}]" if self.info.max_batch_size else f"[{dims}]"

    def infer(
        self,
        inputs: Tensors,
        *,
        timeout: float | None = None,
        times: RequestTimes | None = None,
    ) -> asyncio.Future:
        """Check and queue a request; await the result for its outputs. A bad request or a
        full queue raises here, at the call. (A plain function returning the batcher's
        future, not a coroutine: one frame less on every request.)"""
        return self.queue(self.check(inputs), timeout=timeout, times=times)

    def queue(
        self,
        request: CheckedRequest,
        *,
        timeout: float | None = None,
        times: RequestTimes | None = None,
    ) -> asyncio.Future:
        """Queue a request that has passed `check` (or `checked`). With `times`
        (`stats.begin()`'s), the caller records the
        request's outcome in `stats`; without, the batcher does (serving/stats.py)."""
        if self.batcher is None:
            raise InternalError(f"model '{self.name}' was not started before serving")
        deadline = None
        if timeout is not None:
            deadline = asyncio.get_running_loop().time() + timeout
        return self.batcher.submit(*request, deadline, times)

    def busy(self) -> bool:
        """Requests are queued or running."""
        batcher = self.batcher
        return batcher is not None and bool(batcher.queue or batcher.taken)

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Stop taking requests; those queued or running finish first (for up to
        `drain_s`), the rest answer UNAVAILABLE."""
        if self.batcher is not None:
            await self.batcher.close(drain_s)


def _failed_node(error: Exception) -> str:
    """onnxruntime's reason without its codes: which node failed, and why ("its Cast
    node: stoll")."""
    text = str(error)
    reason = text.rsplit("Status Message:", 1)[-1].strip()
    node = re.search(r"running (\S+) node\. Name:'([^']*)'", text)
    if node is None:
        return reason
    name = f" '{node[2]}'" if node[2] else ""
    return f"its {node[1]} node{name}: {reason}"


@functools.cache  # once a process: every model falls back alike
def _fell_back(provider: str) -> None:
    logging.getLogger("netc.serving").warning(
        "warning: onnxruntime could not start %s (its libraries did not load; NETC_DEBUG=1 "
        "shows onnxruntime's reason); models run on the CPU",
        provider,
    )


def _filler(shape: tuple[int, ...], datatype: str) -> np.ndarray:
    """Warm-up data: zeros, or for strings "0", text a string-to-number Cast can parse
    (numpy's object zeros would be ints, which onnxruntime refuses for a string tensor)."""
    if datatype == "BYTES":
        return np.full(shape, "0", dtype=np.object_)
    return np.zeros(shape, dtype=DATATYPES[datatype])


def _type_name(dtype: np.dtype) -> str:
    for name, kind in DATATYPES.items():
        if np.dtype(kind) == dtype:
            return name
    return str(dtype)

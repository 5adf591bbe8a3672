"""What a served model looks like from outside: tensors, batching, labels, task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netc.model_card import Preprocessing

# Triton's datatype names ↔ numpy dtypes (BYTES is a numpy object array of str: UTF-8
# text, as onnxruntime's string tensors take it; see tensors.texts).
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
ONNX_TYPES = {  # onnxruntime's type strings
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output. `dims` follow Triton: without the batch dimension when
    the model batches (max_batch_size > 0); -1 marks a variable size."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model does not batch; dims are full shapes
    platform: str = "onnxruntime_onnx"
    task: str = "classification"  # classification | segmentation | embedding | unknown
    labels: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None  # the model card's (netc.model_card)
    output_stride: tuple[float, float] | None = None
    output_offset: tuple[float, float] | None = None
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None  # None: auto (serving.batcher)
    metadata: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"  # fp32 | fp16 | int8: what its weights and arithmetic are

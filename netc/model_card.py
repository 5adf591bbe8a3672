"""The served-model card: the `netc.*` ONNX metadata export writes and the server reads.

One contract for both sides. `ModelCard.to_props()` gives the metadata_props
a netc export writes (`compiler.onnx_export`, `runtime.export`, the
optimizer's precision passes); `ModelCard.from_props()` reads them back for
serving, INT8 calibration and `netc inspect`, and does all the validation.
The keys, in the order they are written:

| key | value |
| --- | --- |
| netc.network | the description's name |
| netc.task | classification, segmentation or embedding |
| netc.description_sha256 | hex digest of the description's text |
| netc.preprocessing | JSON object: how a picture becomes the input (`Preprocessing`) |
| netc.labels | JSON list of class names, index = class |
| netc.fully_convolutional_from | the task of the net made fully convolutional |
| netc.validation_split | JSON {"val_fraction", "seed"}: the run's held-out images |
| netc.output_stride | JSON [sy, sx]: output pixel i looks at input offset + i·stride |
| netc.output_offset | JSON [oy, ox] |
| netc.precision | fp32, fp16, bf16 or int8 (written by optimize --precision) |
| netc.quantization | JSON object: how an int8 model was quantized |

Reading is lenient, value by value: metadata another tool wrote under our
keys may have any shape, so a value that does not fit its row is read as
absent and the model is served without it. What can only be checked
against the model itself (mean and std against its channel count) is
checked by `Preprocessing.normalisation`.

The size rule: an open output size is an ONNX dim_param holding an integer
expression of the input's dimension name, as `compiler.symbolic.Sym`
prints it ('4*(H//4)', '(H-28)//4'); `size_rule` parses it back into a
function of the input size.

This module sits in netc/, beside errors and fileio, because both sides
import it: the compiler and runtime write the card, serving reads it, and
serving may not depend on the compiler or runtime (the server runs without
torch). It imports nothing but the standard library and netc.errors.
"""

from __future__ import annotations

import ast
import json
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netc.errors import InternalError

TASKS = ("classification", "segmentation", "embedding")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
LAYOUT = "NCHW"

NETWORK = "netc.network"
TASK = "netc.task"
DESCRIPTION_SHA256 = "netc.description_sha256"
PREPROCESSING = "netc.preprocessing"
LABELS = "netc.labels"
FULLY_CONVOLUTIONAL_FROM = "netc.fully_convolutional_from"
VALIDATION_SPLIT = "netc.validation_split"
OUTPUT_STRIDE = "netc.output_stride"
OUTPUT_OFFSET = "netc.output_offset"
PRECISION = "netc.precision"
QUANTIZATION = "netc.quantization"


@dataclass(frozen=True)
class Preprocessing:
    """netc.preprocessing: how a picture in [0, 1] becomes the model's input, as training
    prepared it: resized to `input_size` (fixed H, W; None where open) or, for an
    open-size network trained at one size, to `resize_to`; scaled to `value_range`;
    then `(x - mean) / std` per channel (one value for all channels, or one each)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int | None, ...] | None = None
    resize_to: tuple[int, int] | None = None
    layout: str = LAYOUT
    value_range: tuple[float, float] = (0.0, 1.0)
    channels: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written under netc.preprocessing (resize_to only when set)."""
        data: dict[str, Any] = {
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "input_size": None if self.input_size is None else list(self.input_size),
        }
        if self.resize_to is not None:
            data["resize_to"] = list(self.resize_to)
        data.update(layout=self.layout, value_range=list(self.value_range))
        data["channels"] = self.channels
        return data

    @classmethod
    def from_json(cls, value: Any) -> Preprocessing | None:
        """The preprocessing a JSON value describes; None when it is not an object. Each
        entry that does not fit is read as absent (its default)."""
        if not isinstance(value, dict):
            return None
        value_range = _numbers(value.get("value_range"))
        size = value.get("input_size")
        return cls(
            mean=_numbers(value.get("mean"), scalar=True),
            std=_numbers(value.get("std"), scalar=True),
            input_size=tuple(size)
            if isinstance(size, list) and all(d is None or _positive(d) for d in size)
            else None,
            resize_to=_size(value.get("resize_to")),
            layout=value["layout"] if isinstance(value.get("layout"), str) else LAYOUT,
            value_range=value_range if value_range and len(value_range) == 2 else (0.0, 1.0),
            channels=value["channels"] if _positive(value.get("channels")) else None,
        )

    def normalisation(
        self, channels: int
    ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """(mean, std), one value per channel, each None where the card has none.

        ValueError, saying which entry, when one does not fit `channels` (neither one
        value nor one per channel), is not finite, or std holds a zero; callers
        report it as their kind of error."""
        fitted: list[tuple[float, ...] | None] = []
        for key, values in (("mean", self.mean), ("std", self.std)):
            if values is None:
                fitted.append(None)
                continue
            if len(values) not in (1, channels) or not all(map(math.isfinite, values)):
                raise ValueError(
                    f"netc.preprocessing {key} {list(values)} does not fit {channels} channels"
                )
            if key == "std" and 0 in values:
                raise ValueError(f"netc.preprocessing std {list(values)} has a zero")
            fitted.append(tuple(values) * (channels // len(values)))
        return fitted[0], fitted[1]


@dataclass(frozen=True)
class ModelCard:
    """What a served model is: its task, labels, preprocessing and output geometry, and
    where it came from. Every field is optional (None: not recorded)."""

    task: str | None = None
    labels: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    output_stride: tuple[float, float] | None = None
    output_offset: tuple[float, float] | None = None
    precision: str | None = None
    quantization: dict[str, Any] | None = field(default=None, hash=False)
    validation_split: tuple[float, int] | None = None  # (val_fraction, seed)
    fully_convolutional_from: str | None = None
    network: str | None = None
    description_sha256: str | None = None

    def to_props(self) -> dict[str, str]:
        """The metadata_props to write, in the table's order, recorded fields only.

        InternalError when a field holds what no reader would accept (a writer's bug)."""
        self._check()
        split = self.validation_split
        split_json = None if split is None else {"val_fraction": split[0], "seed": split[1]}
        props: dict[str, Any] = {
            NETWORK: self.network,
            TASK: self.task,
            DESCRIPTION_SHA256: self.description_sha256,
            PREPROCESSING: None if self.preprocessing is None else self.preprocessing.to_json(),
            LABELS: None if self.labels is None else list(self.labels),
            FULLY_CONVOLUTIONAL_FROM: self.fully_convolutional_from,
            VALIDATION_SPLIT: split_json,
            OUTPUT_STRIDE: _floats(self.output_stride),
            OUTPUT_OFFSET: _floats(self.output_offset),
        }
        texts = (NETWORK, TASK, DESCRIPTION_SHA256, FULLY_CONVOLUTIONAL_FROM)
        written = {
            key: value if key in texts else json.dumps(value)
            for key, value in props.items()
            if value is not None
        }
        if self.precision is not None:
            written.update(precision_props(self.precision, self.quantization))
        return written

    def _check(self) -> None:
        if self.task is not None and self.task not in TASKS:
            raise InternalError(f"model card: task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.labels is not None and not all(isinstance(v, str) for v in self.labels):
            raise InternalError(f"model card: labels {list(self.labels)!r} are not all text")
        for name in ("output_stride", "output_offset"):
            value = getattr(self, name)
            if value is not None and _pair(list(value)) is None:
                raise InternalError(f"model card: {name} {value!r} is not two numbers")

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> ModelCard:
        """The card in a model's metadata_props (any mapping of str to str). Never raises:
        a value of the wrong shape is read as absent."""
        split = _split(_load(props, VALIDATION_SPLIT))
        labels = _load(props, LABELS)
        quantization = _load(props, QUANTIZATION)
        return cls(
            task=_text(props.get(TASK)),
            labels=tuple(str(v) for v in labels) if isinstance(labels, list) else None,
            preprocessing=Preprocessing.from_json(_load(props, PREPROCESSING)),
            output_stride=_pair(_load(props, OUTPUT_STRIDE)),
            output_offset=_pair(_load(props, OUTPUT_OFFSET)),
            precision=props.get(PRECISION) if props.get(PRECISION) in PRECISIONS else None,
            quantization=quantization if isinstance(quantization, dict) else None,
            validation_split=split,
            fully_convolutional_from=_text(props.get(FULLY_CONVOLUTIONAL_FROM)),
            network=_text(props.get(NETWORK)),
            description_sha256=_text(props.get(DESCRIPTION_SHA256)),
        )

    @classmethod
    def from_model(cls, model: Any) -> ModelCard:
        """The card of an `onnx.ModelProto` (anything with `metadata_props`)."""
        return cls.from_props(props_of(model))


def props_of(model: Any) -> dict[str, str]:
    """An `onnx.ModelProto`'s metadata_props as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def precision_props(precision: str, quantization: dict[str, Any] | None = None) -> dict[str, str]:
    """The props `netc optimize --precision` adds to a model it reduced (they replace any
    of the same keys); InternalError for a precision readers would ignore."""
    if precision not in PRECISIONS:
        raise InternalError(f"model card: precision {precision!r} is not one of {PRECISIONS}")
    props = {PRECISION: precision}
    if quantization is not None:
        props[QUANTIZATION] = json.dumps(quantization)
    return props


# ---------------------------------------------------------------------------- size rules

_OPS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


def size_rule(expression: Any, variable: Any) -> Callable[[int], int] | None:
    """An output size as a function of the input size, from symbolic ONNX dimensions.

    netc writes open output sizes as integer expressions of the input's
    dimension name (`Sym.__str__`), e.g. '4*(H//4)' or '(H-28)//4' for an
    input dimension 'H'. None when the output dimension is not such an
    expression (an int, or a name another exporter made up).
    """
    if not isinstance(expression, str) or not isinstance(variable, str):
        return None
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return None

    def check(node) -> bool:
        if isinstance(node, ast.BinOp):
            return type(node.op) in _OPS and check(node.left) and check(node.right)
        if isinstance(node, ast.UnaryOp):
            return isinstance(node.op, ast.USub) and check(node.operand)
        if isinstance(node, ast.Constant):
            return isinstance(node.value, int)
        return isinstance(node, ast.Name)

    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    if names != {variable} or not check(tree):
        return None

    def evaluate(node, size: int) -> int:
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](evaluate(node.left, size), evaluate(node.right, size))
        if isinstance(node, ast.UnaryOp):
            return -evaluate(node.operand, size)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):  # check() took ints only
            return node.value
        return size

    return lambda size: evaluate(tree, size)


# ---------------------------------------------------------------------------- reading values


def _floats(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def _load(props: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(props[key]) if key in props else None
    except (TypeError, ValueError):  # not JSON: another tool's value
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _numbers(value: Any, *, scalar: bool = False) -> tuple[float, ...] | None:
    """A list of numbers (or, with `scalar`, one number) as floats; None otherwise."""
    if scalar and _number(value):
        return (float(value),)
    if isinstance(value, list) and all(map(_number, value)):
        return tuple(float(v) for v in value)
    return None


def _pair(value: Any) -> tuple[float, float] | None:
    numbers = _numbers(value)
    return (numbers[0], numbers[1]) if numbers is not None and len(numbers) == 2 else None


def _size(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(map(_positive, value)):
        return (value[0], value[1])
    return None


def _split(value: Any) -> tuple[float, int] | None:
    """(val_fraction, seed) when both are there and make a split: 0 <= fraction < 1."""
    try:
        fraction, seed = float(value["val_fraction"]), int(value["seed"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return (fraction, seed) if 0 <= fraction < 1 and seed >= 0 else None

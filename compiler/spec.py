"""The top level of a network description: keys, inputs, params, blocks, outputs.

`parse_network` checks the document's outer structure and returns a
`NetworkSpec` whose layers and blocks are still raw (located) mappings;
`compiler.expand` turns those into a flat list of layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from netc.errors import SourceLoc, SpecError, describe, did_you_mean
from netc.yaml_loader import LocList, LocMap

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")  # used with fullmatch: no trailing newline
TASKS = ("classification", "segmentation", "embedding")
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "task",
    "params",
    "inputs",
    "blocks",
    "layers",
    "outputs",
    "training",
)
BLOCK_KEYS = ("params", "inputs", "layers", "output", "description")


@dataclass(frozen=True)
class InputSpec:
    name: str
    dims: tuple[Any, ...]  # ints, or str names of open dimensions
    loc: SourceLoc


@dataclass
class BlockSpec:
    name: str
    params: dict[str, Any]  # name → default (None: required)
    inputs: list[str]
    layers: LocList
    output: str | None
    loc: SourceLoc


@dataclass
class NetworkSpec:
    name: str
    task: str
    params: dict[str, Any]
    inputs: list[InputSpec]
    blocks: dict[str, BlockSpec]
    layers: LocList
    outputs: dict[str, tuple[str, SourceLoc]]
    file: str
    description: str = ""
    training: LocMap | None = None  # checked by netc.runtime.config
    param_locs: dict[str, SourceLoc] = field(default_factory=dict)
    params_loc: SourceLoc | None = None  # the `params` mapping (the document if none)


def check_keys(
    mapping: LocMap, allowed: tuple[str, ...] | list[str], where: str, layer: str | None = None
) -> None:
    for key in mapping:
        if key not in allowed:
            raise SpecError(
                f"unknown key '{key}' in {where}",
                loc=mapping.key_loc(key),
                layer=layer,
                expected="one of " + ", ".join(allowed),
                found=f"'{key}'",
                hint=did_you_mean(key, allowed),
            )


def expect(
    value: Any, kind: type | tuple[type, ...], what: str, loc: SourceLoc, layer: str | None = None
) -> Any:
    ok = isinstance(value, kind) and not (isinstance(value, bool) and bool not in _as_tuple(kind))
    if not ok:
        raise SpecError(
            f"{what} has the wrong type",
            loc=loc,
            layer=layer,
            expected=_kind_name(kind),
            found=describe(value),
        )
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "an integer",
        bool: "true or false",
    }
    return " or ".join(names.get(k, k.__name__) for k in _as_tuple(kind))


def check_name(name: Any, loc: SourceLoc, what: str) -> str:
    expect(name, str, what, loc)
    if not NAME_PATTERN.fullmatch(name):
        shown = repr(name[:100])  # a newline or control character shows as itself
        raise SpecError(
            f"{what} {shown} is not a valid name",
            loc=loc,
            expected="letters, digits, '_', '-' and '.', starting with a letter or '_'",
            found=shown,
        )
    return name


def parse_network(doc: Any, file: str) -> NetworkSpec:
    """Check the top-level structure of a parsed description."""
    if not isinstance(doc, LocMap):
        raise SpecError(
            "a network description must be a mapping",
            loc=SourceLoc(file, 1, 1),
            expected="keys name, inputs, layers, ...",
            found=describe(doc),
        )
    check_keys(doc, TOP_LEVEL_KEYS, "the network description")
    for key in ("name", "inputs", "layers"):
        if key not in doc:
            raise SpecError(
                f"the description has no '{key}'", loc=doc.loc, expected=f"a top-level '{key}' key"
            )
    name = check_name(doc["name"], doc.value_loc("name"), "the network name")
    task = doc.get("task", "classification")
    if task not in TASKS:
        raise SpecError(
            "unknown task",
            loc=doc.value_loc("task"),
            expected=" or ".join(TASKS),
            found=describe(task),
            hint=did_you_mean(str(task), TASKS),
        )
    params = doc.get("params", LocMap())
    expect(params, dict, "'params'", doc.value_loc("params"))
    layers = doc["layers"]
    expect(layers, list, "'layers'", doc.value_loc("layers"))
    if not layers:
        raise SpecError(
            "the network has no layers", loc=doc.value_loc("layers"), expected="at least one layer"
        )
    description = doc.get("description", "")
    expect(description, str, "'description'", doc.value_loc("description"))
    return NetworkSpec(
        name=name,
        task=task,
        params=dict(params),
        inputs=_parse_inputs(doc["inputs"], doc.value_loc("inputs")),
        blocks=_parse_blocks(doc.get("blocks", LocMap()), doc.value_loc("blocks")),
        layers=layers,
        outputs=_parse_outputs(doc.get("outputs"), doc.value_loc("outputs")),
        file=file,
        description=description,
        param_locs=dict(params.value_locs) if isinstance(params, LocMap) else {},
        training=_parse_training(doc),
        params_loc=doc.value_loc("params"),
    )


def _parse_training(doc: LocMap) -> LocMap | None:
    if "training" not in doc or doc["training"] is None:
        return None
    return expect(doc["training"], dict, "'training'", doc.value_loc("training"))


def _parse_inputs(raw: Any, loc: SourceLoc) -> list[InputSpec]:
    expect(raw, dict, "'inputs'", loc)
    if not raw:
        raise SpecError("the network has no inputs", loc=loc, expected="at least one input")
    inputs: list[InputSpec] = []
    for name, value in raw.items():
        check_name(name, raw.key_loc(name), "input name")
        where = raw.value_loc(name)
        if isinstance(value, LocMap):
            check_keys(value, ("shape",), f"input '{name}'")
            if "shape" not in value:
                raise SpecError(
                    f"input '{name}' has no shape", loc=where, expected="shape: [C, H, W]"
                )
            where, value = value.value_loc("shape"), value["shape"]
        inputs.append(InputSpec(name, _parse_dims(name, value, where, not inputs), where))
    return inputs


def _parse_dims(name: str, value: Any, loc: SourceLoc, first: bool) -> tuple[Any, ...]:
    """C and the sizes, an open size as the name of its symbol: null is H or W for the
    first input and H_<name> or W_<name> for any other, whose sizes are its own (two
    inputs that always match name the same sizes, e.g. [3, H, W] on both)."""
    if not isinstance(value, list) or len(value) not in (1, 3):
        raise SpecError(
            f"input '{name}' shape must be [C, H, W] (or [F] for a vector)",
            loc=loc,
            expected="a list of 3 sizes",
            found=describe(value),
        )
    item_loc = value.item_loc if isinstance(value, LocList) else lambda index: loc
    channels = value[0]
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise SpecError(
            f"input '{name}' channel count must be fixed",
            loc=item_loc(0),
            expected="an integer >= 1",
            found=describe(channels),
            hint="only H and W may be open (null)" if channels is None else None,
        )
    dims: list[Any] = [channels]
    for index, (axis, size) in enumerate(zip(("H", "W"), value[1:]), start=1):
        if size is None:
            dims.append(axis if first else f"{axis}_{name}")
        elif isinstance(size, str) and NAME_PATTERN.fullmatch(size):
            dims.append(size)
        elif isinstance(size, int) and not isinstance(size, bool) and size >= 1:
            dims.append(size)
        else:
            raise SpecError(
                f"input '{name}' size {axis} is not valid",
                loc=item_loc(index),
                expected="an integer >= 1, or null for an open size",
                found=describe(size),
            )
    return tuple(dims)


def _parse_blocks(raw: Any, loc: SourceLoc) -> dict[str, BlockSpec]:
    expect(raw, dict, "'blocks'", loc)
    blocks = {}
    for name, body in raw.items():
        check_name(name, raw.key_loc(name), "block name")
        where = raw.value_loc(name)
        expect(body, dict, f"block '{name}'", where)
        check_keys(body, BLOCK_KEYS, f"block '{name}'")
        if "layers" not in body:
            raise SpecError(f"block '{name}' has no layers", loc=where, expected="a 'layers' list")
        layers = expect(body["layers"], list, f"block '{name}' layers", body.value_loc("layers"))
        if not layers:
            raise SpecError(
                f"block '{name}' has no layers",
                loc=body.value_loc("layers"),
                expected="at least one layer",
            )
        params = expect(
            body.get("params", {}), dict, f"block '{name}' params", body.value_loc("params")
        )
        inputs = body.get("inputs", ["input"])
        expect(inputs, list, f"block '{name}' inputs", body.value_loc("inputs"))
        for item in inputs:
            check_name(item, body.value_loc("inputs"), f"block '{name}' input")
        output = body.get("output")
        if output is not None:
            check_name(output, body.value_loc("output"), f"block '{name}' output")
        blocks[name] = BlockSpec(name, dict(params), list(inputs), layers, output, where)
    return blocks


def _parse_outputs(raw: Any, loc: SourceLoc) -> dict[str, tuple[str, SourceLoc]]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw_items = [(raw, raw, loc)]
    elif isinstance(raw, LocList):
        raw_items = [(item, item, raw.item_loc(i)) for i, item in enumerate(raw)]
    elif isinstance(raw, LocMap):
        raw_items = [(key, value, raw.value_loc(key)) for key, value in raw.items()]
    else:
        raise SpecError(
            "'outputs' has the wrong type",
            loc=loc,
            expected="a layer name, a list of them, or a mapping",
            found=describe(raw),
        )
    outputs = {}
    for out_name, layer, where in raw_items:
        check_name(out_name, where, "output name")
        check_name(layer, where, "output layer")
        if out_name in outputs:
            raise SpecError(f"output '{out_name}' is listed twice", loc=where)
        outputs[out_name] = (layer, where)
    return outputs

"""Lower flat layers to the IR: check attributes, sort, infer shapes.

Steps, in order:
1. validate each layer's attributes against its op (`_lower_attrs`), and those of
   `when: false` layers, which go no further;
2. sort the layers topologically, reporting a cycle with its path;
3. infer every output shape in that order (resolving `crop` offsets 'auto'
   from the receptive fields of its two inputs).
"""

from __future__ import annotations

import math
from typing import Any

from netc.compiler import receptive_field as rfield
from netc.compiler.expand import Expansion, FlatLayer
from netc.compiler.ir import BATCH, Graph, GraphInput, InitSpec, Node, Shape
from netc.compiler.ops import OPS, ShapeError
from netc.compiler.ops.attrs import AttrTypeError
from netc.compiler.ops.base import format_shape
from netc.compiler.spec import InputSpec, NetworkSpec
from netc.compiler.symbolic import Sym
from netc.errors import SpecError, describe, did_you_mean
from netc.yaml_loader import LocMap

INIT_KINDS = ("default", "gaussian", "gaussian_sqrt_n", "xavier", "he", "bilinear")
INIT_KEYS = ("type", "std", "mode", "bias")


def lower(spec: NetworkSpec, expansion: Expansion, source: str = "") -> Graph:
    inputs = {
        item.name: GraphInput(item.name, _input_shape(item), item.loc) for item in spec.inputs
    }
    layers = {layer.name: layer for layer in expansion.layers}
    attrs = {layer.name: _lower_attrs(layer) for layer in expansion.layers}
    for layer in expansion.disabled:
        _check_attrs(layer)
        _parse_init(layer)
    order = _topological_order(expansion.layers, set(inputs))
    shapes: dict[str, Shape] = {name: item.shape for name, item in inputs.items()}
    fields = {name: rfield.for_input(item.shape) for name, item in inputs.items()}
    nodes = []
    for name in order:
        layer = layers[name]
        in_shapes = [shapes[source] for source in layer.inputs]
        node_attrs = attrs[name]
        try:
            if layer.op == "crop" and node_attrs["offset"] == "auto":
                node_attrs = {
                    **node_attrs,
                    "offset": rfield.crop_offset(fields[layer.inputs[0]], fields[layer.inputs[1]]),
                }
            shape = OPS[layer.op].infer(node_attrs, in_shapes)
        except ShapeError as exc:
            raise _shape_error(exc, layer, in_shapes) from None
        node = Node(
            name=name,
            op=layer.op,
            inputs=tuple(layer.inputs),
            attrs=node_attrs,
            shape=shape,
            loc=layer.loc,
            init=_parse_init(layer),
            trainable=layer.trainable,
        )
        shapes[name] = shape
        fields[name] = rfield.for_node(node, [fields[s] for s in layer.inputs], in_shapes)
        nodes.append(node)
    graph = Graph(
        name=spec.name,
        inputs=inputs,
        nodes=nodes,
        outputs=dict(expansion.outputs),
        task=spec.task,
        source=source,
        file=spec.file,
    )
    graph.verify()
    return graph


def _input_shape(item: InputSpec) -> Shape:
    dims = [Sym.var(d) if isinstance(d, str) else d for d in item.dims]
    return (BATCH, *dims)


def _shape_error(exc: ShapeError, layer: FlatLayer, in_shapes: list[Shape]) -> SpecError:
    found = exc.found
    if found is None and in_shapes:
        found = "input shape " + ", ".join(format_shape(s) for s in in_shapes)
    loc = layer.attr_locs.get(exc.attr, layer.loc) if exc.attr else layer.loc
    return SpecError(
        exc.message, loc=loc, layer=layer.name, expected=exc.expected, found=found, hint=exc.hint
    )


def _lower_attrs(layer: FlatLayer) -> dict[str, Any]:
    _check_input_count(layer)
    return _check_attrs(layer)


def _check_input_count(layer: FlatLayer) -> None:
    op = OPS[layer.op]
    count = len(layer.input_refs)
    if count < op.min_inputs or (op.max_inputs is not None and count > op.max_inputs):
        wanted = (
            f"{op.min_inputs}"
            if op.max_inputs == op.min_inputs
            else f"at least {op.min_inputs}"
            if op.max_inputs is None
            else f"{op.min_inputs} to {op.max_inputs}"
        )
        raise SpecError(
            f"{layer.op} takes {wanted} input(s)",
            loc=layer.loc,
            layer=layer.name,
            expected=f"{wanted} input(s)",
            found=f"{count}",
        )


def _check_attrs(layer: FlatLayer) -> dict[str, Any]:
    """The layer's attributes, checked against its op and normalised."""
    op = OPS[layer.op]
    result = {}
    for key in layer.attrs:
        if key not in op.attrs:
            raise SpecError(
                f"unknown attribute '{key}' for op '{layer.op}'",
                loc=layer.key_locs[key],
                layer=layer.name,
                expected="one of " + (", ".join(op.attrs) or "(no attributes)"),
                found=f"'{key}'",
                hint=did_you_mean(key, op.attrs),
            )
    for key, attr in op.attrs.items():
        if key not in layer.attrs:
            if attr.required:
                raise SpecError(
                    f"op '{layer.op}' needs attribute '{key}'",
                    loc=layer.loc,
                    layer=layer.name,
                    expected=f"a '{key}' key",
                )
            result[key] = attr.default if attr.default is None else attr.kind(attr.default)
            continue
        try:
            result[key] = attr.kind(layer.attrs[key])
        except AttrTypeError as exc:
            raise SpecError(
                f"attribute '{key}' has the wrong type or value",
                loc=layer.attr_locs[key],
                layer=layer.name,
                expected=exc.expected,
                found=exc.found,
                hint=exc.hint,
            ) from None
    try:
        return op.normalize(result)
    except ShapeError as exc:
        raise _shape_error(exc, layer, []) from None


def _parse_init(layer: FlatLayer) -> InitSpec:
    raw, loc = layer.init, layer.init_loc
    if raw is None:
        return InitSpec()
    if "weighted" not in OPS[layer.op].tags or layer.op == "batch_norm":
        raise SpecError(
            f"op '{layer.op}' has no weights to initialise",
            loc=loc,
            layer=layer.name,
            hint="remove 'init' from this layer",
        )
    spec = {"type": raw} if isinstance(raw, str) else raw
    if not isinstance(spec, dict):
        raise SpecError(
            "'init' has the wrong type",
            loc=loc,
            layer=layer.name,
            expected="an init name or {type: ..., ...}",
            found=describe(raw),
        )
    located = isinstance(raw, LocMap)  # else a bare name: point at the `init` value
    where, key_loc = (raw.value_loc, raw.key_loc) if located else (lambda k: loc, lambda k: loc)
    for key in spec:
        if key not in INIT_KEYS:
            raise SpecError(
                f"unknown init option '{key}'",
                loc=key_loc(key),
                layer=layer.name,
                expected="one of " + ", ".join(INIT_KEYS),
                found=f"'{key}'",
                hint=did_you_mean(key, INIT_KEYS),
            )
    kind = spec.get("type", "default")
    if kind not in INIT_KINDS:
        raise SpecError(
            f"unknown init type '{kind}'",
            loc=where("type"),
            layer=layer.name,
            expected="one of " + ", ".join(INIT_KINDS),
            found=describe(kind),
            hint=did_you_mean(str(kind), INIT_KINDS),
        )
    std, bias, mode = spec.get("std"), spec.get("bias", 0.0), spec.get("mode", "fan_in")
    for key, value in (("std", std), ("bias", bias)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise SpecError(
                f"init '{key}' must be a finite number",
                loc=where(key),
                layer=layer.name,
                found=describe(value),
            )
    if std is not None and kind != "gaussian":
        raise SpecError(
            "init 'std' applies to type gaussian only",
            loc=where("std"),
            layer=layer.name,
            found=f"type '{kind}'",
        )
    if mode not in ("fan_in", "fan_out"):
        raise SpecError(
            "init 'mode' must be fan_in or fan_out",
            loc=where("mode"),
            layer=layer.name,
            found=describe(mode),
        )
    if kind == "bilinear" and layer.op != "conv_transpose":
        raise SpecError(
            "bilinear init applies to conv_transpose only",
            loc=where("type"),
            layer=layer.name,
            found=f"op '{layer.op}'",
        )
    return InitSpec(
        kind=kind,
        std=0.01 if kind == "gaussian" and std is None else std,
        mode=mode,
        bias=float(bias),
    )


def _topological_order(layers: list[FlatLayer], inputs: set[str]) -> list[str]:
    """Layers in dependency order, keeping file order where the graph allows."""
    by_name = {layer.name: layer for layer in layers}
    order: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    for root in by_name:
        if state.get(root) == 2:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            name, index = stack[-1]
            sources = by_name[name].inputs
            if index == len(sources):
                stack.pop()
                state[name] = 2
                order.append(name)
                continue
            stack[-1] = (name, index + 1)
            source = sources[index]
            if source in inputs or state.get(source) == 2:
                continue
            if state.get(source) == 1:
                # Each stack entry reads the next one; data flows the other way.
                path = [n for n, _ in stack]
                segment = path[path.index(source) :]
                cycle = [source, *reversed(segment[1:]), source]
                layer = by_name[source]
                raise SpecError(
                    "the layers form a cycle",
                    loc=layer.loc,
                    layer=source,
                    expected="a directed acyclic graph",
                    found="cycle " + " -> ".join(cycle),
                    hint="one of these layers must take an earlier layer as input",
                )
            state[source] = 1
            stack.append((source, 0))
    return order

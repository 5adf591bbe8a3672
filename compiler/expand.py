"""Flatten a description: substitute parameters, instantiate blocks, unroll
`repeat`, drop `when: false` layers, and resolve every input reference.

The result is a list of `FlatLayer`s, one per op, with fully qualified names
(`layer2.0.conv1`) and resolved input names, in file order (not yet sorted).
A `when: false` layer is not among them, but its own fields are still checked
(its op or block and block parameters here, its attributes and init when
lowering): a typo in a layer switched off today is an error the day it is
switched on. Its inputs and shapes are not checked: it is not in the graph.

Names that stand for another layer are kept as aliases while expanding: a
block instance stands for its output layer, a repeat for its last copy and a
removed layer for its first input. References resolve in the scope where they
were written (a block sees its own layers and inputs); at the top level a
fully qualified inner name (`layer4.1.relu2`) is also accepted, for side
outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from netc.compiler import layer_fields
from netc.compiler.layer_fields import MAX_LAYERS, RESERVED_KEYS
from netc.compiler.reserved_names import MODULE_ATTRIBUTES
from netc.compiler.spec import BlockSpec, NetworkSpec, check_name
from netc.errors import SourceLoc, SpecError, describe, did_you_mean
from netc.yaml_loader import LocList, LocMap

_WHOLE_PARAM = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)$")
_INLINE_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Scope:
    prefix: str
    locals: set[str]
    inputs: dict[str, Ref]
    block: str | None = None


@dataclass
class Ref:
    """A name as written (`text` in `scope`), or an already qualified `full` name."""

    loc: SourceLoc | None  # where it was written, for errors
    text: str = ""
    scope: Scope | None = None
    full: str | None = None


@dataclass
class FlatLayer:
    name: str
    op: str
    attrs: dict[str, Any]
    attr_locs: dict[str, SourceLoc]
    key_locs: dict[str, SourceLoc]
    input_refs: list[Ref]
    init: Any
    init_loc: SourceLoc
    trainable: bool
    loc: SourceLoc
    inputs: list[str] = field(default_factory=list)


@dataclass
class Expansion:
    layers: list[FlatLayer]
    outputs: dict[str, str]
    input_names: list[str]
    disabled: list[FlatLayer] = field(default_factory=list)  # `when: false` op layers, no inputs


def expand(spec: NetworkSpec, overrides: dict[str, Any] | None = None) -> Expansion:
    """Expand a parsed description into flat layers with resolved inputs."""
    env = _network_params(spec, overrides or {})
    top = Scope(prefix="", locals=set(), inputs={})
    for item in spec.inputs:
        top.inputs[item.name] = Ref(item.loc, full=item.name)
    first_input = Ref(spec.inputs[0].loc, full=spec.inputs[0].name)
    state = _State(spec, [item.name for item in spec.inputs])
    last = state.expand_scope(spec.layers, top, env, first_input, True, ())
    for layer in state.layers:
        layer.inputs = [state.resolve(ref, layer.name) for ref in layer.input_refs]
    outputs = {
        out: state.resolve(Ref(loc, text=layer_name, scope=top), None)
        for out, (layer_name, loc) in spec.outputs.items()
    }
    if not outputs:
        outputs = {last.text: state.resolve(last, None)}
    layer_names = {layer.name for layer in state.layers}
    for out, source in outputs.items():
        loc = spec.outputs[out][1] if out in spec.outputs else spec.layers.loc
        if source in state.input_names:
            raise SpecError(f"output '{out}' is a network input, not a layer", loc=loc)
        if out != source and (out in layer_names or out in state.input_names):
            # an exported graph names every tensor by its layer, so the two would collide
            other = "layer" if out in layer_names else "network input"
            raise SpecError(
                f"output '{out}' gives layer '{source}' the name of another {other}, "
                f"'{out}'; name the output differently (e.g. '{out}_out')",
                loc=loc,
            )
    return Expansion(state.layers, outputs, state.input_names, state.disabled)


def _network_params(spec: NetworkSpec, overrides: dict[str, Any]) -> dict[str, Any]:
    env = dict(spec.params)
    for key, value in overrides.items():
        if key not in env:
            raise SpecError(
                f"cannot set parameter '{key}': the network has no such parameter",
                loc=spec.params_loc,
                expected="one of " + (", ".join(env) or "(none)"),
                found=f"'{key}'",
                hint=did_you_mean(key, env),
            )
        env[key] = value
    return env


def substitute(
    value: Any, env: dict[str, Any], loc: SourceLoc, layer: str | None, block: str | None = None
) -> Any:
    """Replace `$p` (keeping the parameter's type) and `${p}` (inside strings).

    `block` names the block whose parameters `env` holds (None: the network's).
    """

    def lookup(name: str) -> Any:
        if name not in env:
            declare = (
                f"a block sees only its own params: declare '{name}' in block '{block}'"
                if block
                else f"declare '{name}' in the top-level params"
            )
            raise SpecError(
                f"unknown parameter '${name}'",
                loc=loc,
                layer=layer,
                expected="one of " + (", ".join(f"${p}" for p in env) or "(none)"),
                found=f"'${name}'",
                hint=did_you_mean(name, env) or declare,
            )
        return env[name]

    if isinstance(value, str):
        whole = _WHOLE_PARAM.match(value)
        if whole:
            return lookup(whole.group(1))
        return _INLINE_PARAM.sub(lambda m: str(lookup(m.group(1))), value)
    if isinstance(value, LocMap):
        result = LocMap()
        result.loc, result.key_locs, result.value_locs = value.loc, value.key_locs, value.value_locs
        for key, item in value.items():
            result[key] = substitute(item, env, value.value_loc(key), layer, block)
        return result
    if isinstance(value, LocList):
        items = LocList(
            substitute(item, env, value.item_loc(i), layer, block) for i, item in enumerate(value)
        )
        items.loc, items.item_locs = value.loc, value.item_locs
        return items
    return value


class _State:
    def __init__(self, spec: NetworkSpec, input_names: list[str]) -> None:
        self.spec = spec
        self.input_names = input_names
        self.layers: list[FlatLayer] = []
        self.disabled: list[FlatLayer] = []
        self.aliases: dict[str, Ref] = {}
        self.defined: dict[str, SourceLoc | None] = {}

    # -- expansion ----------------------------------------------------------------

    def expand_scope(
        self,
        entries: LocList,
        scope: Scope,
        env: dict[str, Any],
        previous: Ref,
        trainable: bool,
        stack: tuple[str, ...],
    ) -> Ref:
        seen: dict[str, SourceLoc] = {}
        prepared = [self._prepare(entries, i, scope, env, seen) for i in range(len(entries))]
        scope.locals.update(name for name, _ in prepared)
        last = previous
        for name, entry in prepared:
            last = self._expand_entry(name, entry, scope, last, trainable, stack)
        return last

    def _prepare(
        self,
        entries: LocList,
        index: int,
        scope: Scope,
        env: dict[str, Any],
        seen: dict[str, SourceLoc],
    ) -> tuple[str, LocMap]:
        raw, loc = entries[index], entries.item_loc(index)
        if not isinstance(raw, LocMap):
            raise SpecError(
                "a layer must be a mapping",
                loc=loc,
                expected="{name: ..., op: ...}",
                found=describe(raw),
            )
        if "name" not in raw:
            raise SpecError(
                "layer has no name",
                loc=loc,
                expected="a 'name' key",
                hint="every layer needs a unique name",
            )
        label = scope.prefix + raw["name"] if isinstance(raw["name"], str) else None
        entry = substitute(raw, env, loc, label, scope.block)
        name = check_name(entry["name"], entry.value_loc("name"), "layer name")
        _check_not_reserved(name, entry.value_loc("name"))
        if name in seen or name in scope.inputs:
            where = f"block '{scope.block}'" if scope.block else "the network"
            hint = (
                f"the first '{name}' is at line {seen[name].line}"
                if name in seen
                else f"'{name}' is already an input of {where}"
            )
            raise SpecError(
                f"duplicate layer name '{name}'",
                loc=entry.value_loc("name"),
                layer=scope.prefix + name,
                hint=hint,
            )
        seen[name] = entry.value_loc("name")
        scope.locals.add(name)
        return name, entry

    def _expand_entry(
        self,
        name: str,
        entry: LocMap,
        scope: Scope,
        previous: Ref | None,
        trainable: bool,
        stack: tuple[str, ...],
    ) -> Ref:
        full = scope.prefix + name
        inputs = self._input_refs(entry, scope, previous, full)
        if "trainable" in entry:
            trainable = layer_fields.flag(entry, "trainable", full)
        if "when" in entry and not layer_fields.flag(entry, "when", full):
            self._check_disabled(full, entry, trainable)
            self._define(full, entry.loc)
            self.aliases[full] = inputs[0]
            return Ref(entry.loc, text=name, scope=scope)
        if "repeat" in entry:
            self._expand_repeat(full, entry, scope, inputs, trainable, stack)
        else:
            layer_fields.check_no_first(entry, full)
            self._expand_one(full, entry, scope, inputs, trainable, stack)
        return Ref(entry.loc, text=name, scope=scope)

    def _check_disabled(self, full: str, entry: LocMap, trainable: bool) -> None:
        """Check a `when: false` layer's own fields, as its first copy if repeated."""
        if "repeat" in entry:
            _, first = layer_fields.repeat_of(entry, full)
            entry = layer_fields.copy_of(entry, 0, first)
        else:
            layer_fields.check_no_first(entry, full)
        if layer_fields.has_block(entry, full):
            block = self._block(full, entry)
            layer_fields.check_no_init(entry, full)
            layer_fields.bind_block_params(block, entry, full)
            return
        layer_fields.check_op(entry, full, self.spec.blocks)
        self.disabled.append(_flat_layer(full, entry, [], trainable))

    def _input_refs(
        self, entry: LocMap, scope: Scope, previous: Ref | None, full: str
    ) -> list[Ref]:
        if "inputs" not in entry:
            if previous is None:
                raise SpecError(
                    "layer has no input", loc=entry.loc, layer=full, expected="an 'inputs' key"
                )
            return [previous]
        raw, loc = entry["inputs"], entry.value_loc("inputs")
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
            raise SpecError(
                "'inputs' has the wrong type",
                loc=loc,
                layer=full,
                expected="a layer name or a non-empty list of them",
                found=describe(raw),
            )
        locs = raw.item_locs if isinstance(raw, LocList) else [loc] * len(items)
        return [Ref(locs[i], text=text, scope=scope) for i, text in enumerate(items)]

    def _expand_repeat(
        self,
        full: str,
        entry: LocMap,
        scope: Scope,
        inputs: list[Ref],
        trainable: bool,
        stack: tuple[str, ...],
    ) -> None:
        count, first = layer_fields.repeat_of(entry, full)
        self._define(full, entry.loc)
        for index in range(count):
            copy = layer_fields.copy_of(entry, index, first)
            copy_inputs = inputs if index == 0 else [Ref(entry.loc, full=f"{full}.{index - 1}")]
            self._expand_one(f"{full}.{index}", copy, scope, copy_inputs, trainable, stack)
        self.aliases[full] = Ref(entry.loc, full=f"{full}.{count - 1}")

    def _expand_one(
        self,
        full: str,
        entry: LocMap,
        scope: Scope,
        inputs: list[Ref],
        trainable: bool,
        stack: tuple[str, ...],
    ) -> None:
        if layer_fields.has_block(entry, full):
            self._expand_block(full, entry, inputs, trainable, stack)
            return
        layer_fields.check_op(entry, full, self.spec.blocks)
        self._define(full, entry.value_loc("name"))
        if len(self.layers) >= MAX_LAYERS:  # repeat counts and blocks multiply
            raise SpecError(
                f"the network expands to more than {MAX_LAYERS:,} layers",
                loc=entry.value_loc("name"),
                layer=full,
                hint="check the 'repeat' counts and how often blocks use each other",
            )
        self.layers.append(_flat_layer(full, entry, inputs, trainable))

    def _block(self, full: str, entry: LocMap) -> BlockSpec:
        block_name = entry["block"]
        block = self.spec.blocks.get(block_name) if isinstance(block_name, str) else None
        if block is None:
            raise SpecError(
                f"unknown block '{block_name}'",
                loc=entry.value_loc("block"),
                layer=full,
                expected="one of " + (", ".join(self.spec.blocks) or "(no blocks defined)"),
                found=describe(block_name),
                hint=did_you_mean(str(block_name), self.spec.blocks),
            )
        return block

    def _expand_block(
        self, full: str, entry: LocMap, inputs: list[Ref], trainable: bool, stack: tuple[str, ...]
    ) -> None:
        block = self._block(full, entry)
        block_name = block.name
        layer_fields.check_nesting(block_name, stack, entry, full)
        layer_fields.check_no_init(entry, full)
        env = layer_fields.bind_block_params(block, entry, full)
        if len(inputs) != len(block.inputs):
            raise SpecError(
                f"block '{block_name}' takes {len(block.inputs)} input(s)",
                layer=full,
                loc=entry.value_loc("inputs") if "inputs" in entry else entry.loc,
                expected=f"{len(block.inputs)} ({', '.join(block.inputs)})",
                found=f"{len(inputs)}",
            )
        self._define(full, entry.value_loc("name"))
        inner = Scope(
            prefix=full + ".",
            locals=set(),
            inputs=dict(zip(block.inputs, inputs)),
            block=block_name,
        )
        first = Ref(entry.loc, text=block.inputs[0], scope=inner)
        last = self.expand_scope(block.layers, inner, env, first, trainable, (*stack, block_name))
        if block.output is not None:
            if block.output not in inner.locals:
                raise SpecError(
                    f"block '{block_name}' output '{block.output}' is not one of its layers",
                    loc=block.loc,
                    expected=", ".join(sorted(inner.locals)),
                    hint=did_you_mean(block.output, inner.locals),
                )
            last = Ref(block.loc, text=block.output, scope=inner)
        self.aliases[full] = last

    def _define(self, full: str, loc: SourceLoc | None) -> None:
        if full in self.defined or full in self.input_names:
            where = self.defined.get(full)
            raise SpecError(
                f"duplicate layer name '{full}'",
                loc=loc,
                layer=full,
                hint=f"'{full}' is already defined"
                + (f" at line {where.line}" if where else " as a network input"),
            )
        self.defined[full] = loc

    # -- resolution ---------------------------------------------------------------

    def resolve(self, ref: Ref, layer: str | None) -> str:
        seen: list[str] = []
        while True:
            name = ref.full if ref.full is not None else self._lookup(ref, layer)
            if name in self.aliases:
                if name in seen:
                    raise SpecError(
                        "cycle through removed layers",
                        loc=ref.loc,
                        layer=layer,
                        found=" -> ".join([*seen, name]),
                    )
                seen.append(name)
                ref = self.aliases[name]
                continue
            return name

    def _lookup(self, ref: Ref, layer: str | None) -> str:
        scope = ref.scope
        assert scope is not None
        if ref.text in scope.inputs:
            if scope.prefix == "":
                return ref.text
            outer = scope.inputs[ref.text]
            return outer.full if outer.full is not None else self._lookup(outer, layer)
        if ref.text in scope.locals:
            return scope.prefix + ref.text
        if scope.prefix == "" and ref.text in self.defined:
            return ref.text
        candidates = sorted(scope.locals | set(scope.inputs))
        raise SpecError(
            f"unknown {'input' if layer else 'output layer'} '{ref.text}'",
            loc=ref.loc,
            layer=layer,
            expected="a layer or input "
            + ("of block '" + scope.block + "'" if scope.block else "of the network"),
            found=f"'{ref.text}'",
            hint=did_you_mean(
                ref.text, candidates + (list(self.defined) if not scope.prefix else [])
            ),
        )


def _flat_layer(full: str, entry: LocMap, inputs: list[Ref], trainable: bool) -> FlatLayer:
    attrs = {k: v for k, v in entry.items() if k not in RESERVED_KEYS}
    return FlatLayer(
        name=full,
        op=entry["op"],
        attrs=attrs,
        attr_locs={k: entry.value_loc(k) for k in attrs},
        key_locs={k: entry.key_loc(k) for k in attrs},
        input_refs=inputs,
        init=entry.get("init"),
        init_loc=entry.value_loc("init"),
        trainable=trainable,
        loc=entry.value_loc("name"),
    )


def _check_not_reserved(name: str, loc: SourceLoc) -> None:
    """A layer name PyTorch can register: no dotted part is an nn.Module attribute."""
    taken = [part for part in name.split(".") if part in MODULE_ATTRIBUTES]
    if taken:
        raise SpecError(
            f"layer name '{name}' cannot be used: '{taken[0]}' is an attribute of PyTorch's "
            "nn.Module, under which netc registers the layer",
            loc=loc,
            hint=f"rename it, e.g. '{name.replace(taken[0], taken[0] + '_', 1)}'",
        )

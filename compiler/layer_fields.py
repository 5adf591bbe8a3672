"""One layer of a description as written: checks of its own keys, before expansion.

These read a single (parameter-substituted) layer mapping and say what is wrong with
it, naming the layer and pointing at the key or value; they see nothing of the graph.
"""

from __future__ import annotations

from typing import Any

from netc.compiler.ops import OPS
from netc.compiler.spec import BlockSpec
from netc.errors import SpecError, describe, did_you_mean
from netc.yaml_loader import LocMap

MAX_LAYERS = 100_000  # densenet121, the largest zoo net, has 427
MAX_BLOCK_DEPTH = 64  # blocks inside blocks; torchvision's deepest nets nest 3
RESERVED_KEYS = ("name", "op", "block", "inputs", "init", "trainable", "when", "repeat", "first")


def flag(entry: LocMap, key: str, layer: str) -> bool:
    value = entry[key]
    if not isinstance(value, bool):
        raise SpecError(
            f"'{key}' must be true or false",
            loc=entry.value_loc(key),
            layer=layer,
            expected="true or false",
            found=describe(value),
        )
    return value


def check_nesting(block_name: str, stack: tuple[str, ...], entry: LocMap, full: str) -> None:
    """A block that uses itself, directly or through others, would expand forever; a
    chain of distinct blocks past MAX_BLOCK_DEPTH is refused as too deep, not as a cycle."""
    if block_name in stack:
        cycle = (*stack[stack.index(block_name) :], block_name)
        raise SpecError(
            f"block '{block_name}' uses itself"
            + (f" through {', '.join(repr(b) for b in cycle[1:-1])}" if len(cycle) > 2 else ""),
            loc=entry.value_loc("block"),
            layer=full,
            expected="blocks that use each other without a cycle",
            found="cycle " + " -> ".join(cycle),
        )
    if len(stack) >= MAX_BLOCK_DEPTH:
        chain = (*stack, block_name)
        shown = chain if len(chain) <= 8 else (*chain[:3], "...", *chain[-3:])
        raise SpecError(
            f"blocks nest more than {MAX_BLOCK_DEPTH} deep",
            loc=entry.value_loc("block"),
            layer=full,
            expected=f"at most {MAX_BLOCK_DEPTH} blocks inside one another",
            found=f"{len(chain)}: " + " -> ".join(shown),
            hint="the chain has no cycle (each block in it is different), it is only deep: "
            "inline some of its blocks",
        )


def has_block(entry: LocMap, full: str) -> bool:
    has_op, has_block = "op" in entry, "block" in entry
    if has_op == has_block:
        raise SpecError(
            "a layer needs exactly one of 'op' and 'block'",
            loc=entry.loc,
            layer=full,
            found="both" if has_op else "neither",
        )
    return has_block


def check_op(entry: LocMap, full: str, blocks: dict[str, BlockSpec]) -> None:
    op = entry["op"]
    if not isinstance(op, str) or op not in OPS:
        raise SpecError(
            f"unknown op '{op}'",
            loc=entry.value_loc("op"),
            layer=full,
            expected="one of " + ", ".join(OPS),
            found=describe(op),
            hint=did_you_mean(str(op), list(OPS) + list(blocks)),
        )


def check_no_init(entry: LocMap, full: str) -> None:
    if "init" in entry:
        raise SpecError(
            "'init' applies to op layers, not to block instances",
            loc=entry.key_loc("init"),
            layer=full,
        )


def check_no_first(entry: LocMap, full: str) -> None:
    if "first" in entry:
        raise SpecError(
            "'first' only applies with 'repeat'", loc=entry.key_loc("first"), layer=full
        )


def repeat_of(entry: LocMap, full: str) -> tuple[int, LocMap]:
    """The copy count and the overrides of copy 0."""
    count = entry["repeat"]
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_LAYERS:
        raise SpecError(
            "'repeat' must be a positive count",
            loc=entry.value_loc("repeat"),
            layer=full,
            expected=f"an integer from 1 to {MAX_LAYERS:,}",
            found=describe(count),
        )
    first = entry.get("first", LocMap())
    if not isinstance(first, LocMap):
        raise SpecError(
            "'first' must be a mapping of overrides",
            layer=full,
            loc=entry.value_loc("first"),
            found=describe(first),
        )
    for reserved in set(first) & set(RESERVED_KEYS):
        raise SpecError(
            f"'first' cannot override '{reserved}'", loc=first.key_loc(reserved), layer=full
        )
    return count, first


def copy_of(entry: LocMap, index: int, first: LocMap) -> LocMap:
    """Copy `index` of a repeated layer: the entry with copy 0 taking `first`'s overrides."""
    copy = without(entry, ("repeat", "first"))
    if index == 0:
        for key, value in first.items():
            copy[key] = value
            copy.key_locs[key] = first.key_loc(key)
            copy.value_locs[key] = first.value_loc(key)
    return copy


def without(entry: LocMap, keys: tuple[str, ...]) -> LocMap:
    result = LocMap({k: v for k, v in entry.items() if k not in keys})
    result.loc, result.key_locs, result.value_locs = (
        entry.loc,
        dict(entry.key_locs),
        dict(entry.value_locs),
    )
    return result


def bind_block_params(block: BlockSpec, entry: LocMap, full: str) -> dict[str, Any]:
    env = dict(block.params)
    for key, value in entry.items():
        if key in RESERVED_KEYS:
            continue
        if key not in block.params:
            raise SpecError(
                f"block '{block.name}' has no parameter '{key}'",
                loc=entry.key_loc(key),
                layer=full,
                expected="one of " + (", ".join(block.params) or "(no parameters)"),
                found=f"'{key}'",
                hint=did_you_mean(key, block.params),
            )
        env[key] = value
    missing = [key for key, value in env.items() if value is None]
    if missing:
        raise SpecError(
            f"block '{block.name}' needs parameter '{missing[0]}'",
            loc=entry.loc,
            layer=full,
            expected="values for " + ", ".join(missing),
            found="no value",
            hint=f"add '{missing[0]}: ...' to layer '{full}'",
        )
    return env

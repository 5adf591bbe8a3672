"""YAML → plain Python values that remember where each value came from.

PyYAML's safe loader forgets positions, and every error in a description must
name its file:line:column, so we compose the node tree ourselves and keep the
marks: mappings become `LocMap` and sequences `LocList`, which carry the
location of the container and of each key and item. Scalars stay plain Python
values (int, float, bool, str, None) so the rest of the compiler needs no
special types.
"""

from __future__ import annotations

from typing import Any

import yaml

from netc.errors import InternalError, SourceLoc, SpecError


def _known(loc: SourceLoc | None) -> SourceLoc:
    if loc is None:
        raise InternalError("a location was asked of a mapping or list netc made, not read")
    return loc


class LocMap(dict):
    """A mapping with the location of itself, each key and each value.

    Every one the loader makes has its locations; one made in code (an empty default)
    has loc None and is never asked where its keys are.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loc: SourceLoc | None = None
        self.key_locs: dict[str, SourceLoc] = {}
        self.value_locs: dict[str, SourceLoc] = {}

    def key_loc(self, key: str) -> SourceLoc:
        return _known(self.key_locs.get(key, self.loc))

    def value_loc(self, key: str) -> SourceLoc:
        return _known(self.value_locs.get(key, self.loc))


class LocList(list):
    """A sequence with the location of itself and of each item (loc None: made in code)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loc: SourceLoc | None = None
        self.item_locs: list[SourceLoc] = []

    def item_loc(self, index: int) -> SourceLoc:
        return self.item_locs[index] if index < len(self.item_locs) else _known(self.loc)


def plain(value: Any) -> Any:
    """LocMap/LocList (and tuples) → dict/list, so a value can be stored in JSON or a
    checkpoint."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


_MERGE_TAG = "tag:yaml.org,2002:merge"
# Aliases can make a few lines expand to billions of values ("billion laughs"). A
# value reached again through an alias counts against this cap; a document without
# aliases never touches it, and the zoo's descriptions repeat nothing.
MAX_VALUES = 100_000
MAX_INT = 2**62  # no size, count or setting of a network needs more


def _loc(node: yaml.Node, file: str) -> SourceLoc:
    return SourceLoc(file, node.start_mark.line + 1, node.start_mark.column + 1)


class _Budget:
    """How many more values aliases may repeat."""

    def __init__(self, file: str) -> None:
        self.left, self.file = MAX_VALUES, file
        self.seen: set[int] = set()

    def spend(self, node: yaml.Node) -> None:
        if id(node) not in self.seen:  # its first appearance is free
            self.seen.add(id(node))
            return
        self.left -= 1
        if self.left < 0:
            raise SpecError(
                f"YAML aliases repeat more than {MAX_VALUES:,} values",
                loc=_loc(node, self.file),
                hint="each *alias repeats its anchor's value; nesting them multiplies it",
            )


def _convert(
    node: yaml.Node,
    file: str,
    constructor: yaml.SafeLoader,
    budget: _Budget,
    parents: tuple[yaml.Node, ...] = (),
) -> Any:
    budget.spend(node)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        if any(node is parent for parent in parents):
            raise SpecError(
                "a YAML alias refers to a collection that contains it",
                loc=_loc(node, file),
                hint="the anchor is here; an alias inside it would repeat it forever",
            )
        parents = (*parents, node)
    if isinstance(node, yaml.MappingNode):
        result = LocMap()
        result.loc, result.key_locs, result.value_locs = _loc(node, file), {}, {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise SpecError(
                    "YAML merge keys ('<<') are not supported",
                    loc=_loc(key_node, file),
                    hint="write the keys out, or make a block of the shared layers",
                )
            key = _convert(key_node, file, constructor, budget, parents)
            if not isinstance(key, str):
                raise SpecError(
                    "mapping keys must be names",
                    loc=_loc(key_node, file),
                    expected="a string key",
                    found=repr(key),
                )
            if key in result:
                raise SpecError(
                    f"key '{key}' appears twice in the same mapping",
                    loc=_loc(key_node, file),
                    hint=f"the first '{key}' is at line {result.key_locs[key].line}",
                )
            result[key] = _convert(value_node, file, constructor, budget, parents)
            result.key_locs[key] = _loc(key_node, file)
            result.value_locs[key] = _loc(value_node, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = LocList(_convert(item, file, constructor, budget, parents) for item in node.value)
        items.loc = _loc(node, file)
        items.item_locs = [_loc(item, file) for item in node.value]
        return items
    try:
        value = constructor.construct_object(node, deep=True)
    except Exception:  # PyYAML's constructors fail in many ways on odd tags (`!!int` alone)
        # An explicit tag PyYAML's safe loader rejects (`!foo 3`) or cannot apply (`!!int abc`).
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise SpecError(
            "not valid YAML: cannot read this tagged value",
            loc=_loc(node, file),
            expected="a plain value (netc needs no YAML tags)",
            found=f"{tag} {node.value!r}",
        ) from None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise SpecError(
            "number too large",
            loc=_loc(node, file),
            expected="a number of at most 2^62",
            found=f"a number of {len(node.value)} digits",
        )
    return value


def load_located(text: str, file: str, *, allow_empty: bool = False) -> Any:
    """Parse YAML text; mappings and lists in the result carry source locations.
    `allow_empty`: a document with nothing in it (or only comments) gives None."""
    try:
        loader = yaml.SafeLoader(text)  # reads ahead: a control character fails here
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = SourceLoc(file, mark.line + 1, mark.column + 1) if mark else None
        hint = None
        if exc.problem and exc.context and exc.context_mark:
            # The problem is often found far from its cause: an unclosed `{` lines above.
            context = exc.context_mark
            hint = f"{exc.context} at line {context.line + 1}, column {context.column + 1}"
        raise SpecError(
            f"not valid YAML: {exc.problem or exc.context}", loc=loc, hint=hint
        ) from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError(f"not valid YAML: {first}", loc=SourceLoc(file, 1, 1)) from None
    except RecursionError:
        raise SpecError("not valid YAML: nested too deeply", loc=SourceLoc(file, 1, 1)) from None
    if node is None:
        if allow_empty:
            return None
        raise SpecError("the description is empty", loc=SourceLoc(file, 1, 1))
    try:
        return _convert(node, file, yaml.SafeLoader(""), _Budget(file))
    except RecursionError:
        raise SpecError(
            "the description nests lists or mappings too deeply", loc=_loc(node, file)
        ) from None

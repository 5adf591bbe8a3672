"""The netc intermediate representation: a small, explicit graph of layers.

A `Graph` has named inputs, `Node`s in topological order and named outputs.
Every `Node` carries:

- `name`: unique, from the description (block instances give dotted names,
  `layer1.0.conv1`); it names the PyTorch parameters and the ONNX node.
- `op`: one op of the closed set in `compiler.ops.OPS` (each op's docstring
  there says what it computes).
- `inputs`: names of graph inputs or earlier nodes.
- `attrs`: the op's attributes, normalised (sizes as (h, w) pairs, padding as
  (top, left, bottom, right)).
- `shape`: the inferred output shape; dimension 0 is the symbolic batch `N`,
  open heights and widths are `Sym` expressions of `H` and `W`.
- `init`, `trainable`: how its parameters start and whether they learn.
- `loc`: where the layer was written, for error messages.

Nodes are immutable; passes build new ones with `dataclasses.replace`.
`Graph.verify()` checks the invariants every pass must keep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netc.compiler.symbolic import Dim, Sym
from netc.errors import InternalError, SourceLoc

Shape = tuple[Dim, ...]

BATCH = Sym.var("N")


@dataclass(frozen=True)
class InitSpec:
    """Weight initialisation: `kind` from the description's `init` types."""

    kind: str = "default"
    std: float | None = None
    mode: str = "fan_in"
    bias: float = 0.0


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    shape: Shape
    loc: SourceLoc | None = None
    init: InitSpec = field(default_factory=InitSpec)
    trainable: bool = True


@dataclass(frozen=True)
class GraphInput:
    name: str
    shape: Shape
    loc: SourceLoc | None = None


@dataclass
class Graph:
    name: str
    inputs: dict[str, GraphInput]
    nodes: list[Node]
    outputs: dict[str, str]  # output name → node name
    task: str = "classification"
    source: str = ""  # the description's text, for hashing and checkpoints
    file: str = ""

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def shape_of(self, name: str) -> Shape:
        if name in self.inputs:
            return self.inputs[name].shape
        return self.node(name).shape

    def consumers(self) -> dict[str, list[str]]:
        users: dict[str, list[str]] = {name: [] for name in self.inputs}
        for node in self.nodes:
            users.setdefault(node.name, [])
            for source in node.inputs:
                users.setdefault(source, []).append(node.name)
        return users

    def verify(self) -> None:
        """Check the IR invariants; raise InternalError saying how to fix a violation."""
        from netc.compiler.ops import OPS

        defined = set(self.inputs)
        for node in self.nodes:
            if node.name in defined:
                raise InternalError(f"IR: name '{node.name}' defined twice; names must be unique")
            if node.op not in OPS:
                raise InternalError(f"IR: node '{node.name}' has op '{node.op}' outside the op set")
            for source in node.inputs:
                if source not in defined:
                    raise InternalError(
                        f"IR: node '{node.name}' reads '{source}' before it is defined; "
                        "nodes must be in topological order"
                    )
            if not node.shape or node.shape[0] != BATCH:
                raise InternalError(
                    f"IR: node '{node.name}' shape {node.shape} lacks the batch dim"
                )
            defined.add(node.name)
        for out, source in self.outputs.items():
            if source not in defined:
                raise InternalError(f"IR: output '{out}' names unknown node '{source}'")

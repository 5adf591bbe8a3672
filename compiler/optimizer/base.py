"""What every ONNX optimizer pass is: an in-place onnx_ir pass that also
explains itself.

A pass subclasses `OptimizerPass`, sets `name` (and `flag` if it runs only
on request), implements `call(model) -> ir.passes.PassResult`, and records
what it did with `self.note(...)` (one line per rewrite, or per refusal with
its reason) and `self.macs_saved += n`. The docstring lists its rewrite
cases as numbered items with their equations and preconditions; the code
cites them (`# Case 2: ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from netc.compiler.optimizer.rewrite import bypass, label


class OptimizerPass(ir.passes.InPlacePass):
    name: str = "unnamed"
    flag: str | None = None  # None: always in the pipeline; else only with --enable FLAG

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []
        self.refusals: list[str] = []
        self.macs_saved = 0

    def note(self, line: str) -> None:
        """A rewrite this pass made, in words a user understands."""
        self.notes.append(line)

    def refuse(self, line: str) -> None:
        """A rewrite this pass considered and did not make, with the reason (verbose output)."""
        self.refusals.append(line)

    def remove_identity(self, graph: ir.Graph, node: ir.Node, why: str = "") -> bool:
        """Bypass `node`, which computes its first input, and note it; or refuse, saying why.

        The shared step of every pass that drops a node computing x → x.
        """
        source = node.inputs[0]
        problem = "it has no input" if source is None else bypass(graph, node, source)
        if problem is None:
            self.note(f"{label(node)} removed" + (f": {why}" if why else ""))
            return True
        self.refuse(
            f"{label(node, with_op=True)} kept" + (f" ({why})" if why else "") + f": {problem}"
        )
        return False


@dataclass
class PassReport:
    name: str
    modified: bool
    nodes_before: int
    nodes_after: int
    macs_saved: int = 0
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

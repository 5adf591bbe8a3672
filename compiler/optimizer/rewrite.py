"""What rewrites share: reading constants, naming things, bypassing and re-weighting nodes.

Not a pass. Everything here works on the main graph of an onnx_ir model and
keeps it valid: graph outputs keep their names, new values get unused names,
a shared initializer is never changed in place.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


def constant(value: ir.Value | None) -> np.ndarray | str:
    """The value's data when it cannot change at run time, else why not.

    Constants are initializers that are not also graph inputs (an IR 3 model
    lists initializers as inputs, and then a caller may override them) and
    outputs of Constant nodes, seen through any chain of Identity nodes.
    """
    if value is None:
        return "the input is missing"
    seen = value
    while (node := seen.producer()) is not None and node.op_type == "Identity":
        if node.domain != "" or not node.inputs or node.inputs[0] is None:
            break
        seen = node.inputs[0]
    if seen.is_graph_input():
        kind = (
            "an initializer that is also a graph input"
            if seen.is_initializer()
            else "a graph input"
        )
        hint = "; --freeze-initializer-inputs makes it a constant" if seen.is_initializer() else ""
        return f"{seen.name!r} is {kind}, so it can change at run time{hint}"
    try:
        tensor = ir.convenience.get_const_tensor(seen)
    except ValueError:
        tensor = None
    if tensor is None:
        producer = seen.producer()
        made_by = f"computed by {label(producer, with_op=True)}" if producer else "not a constant"
        return f"{seen.name!r} is {made_by}"
    array = tensor.numpy()
    # large weights are read-only views of the model file's bytes (model_bytes): a copy
    # for the pass, which may compute in place, as it could with protobuf's copies
    return array if array.flags.writeable else array.copy()


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype is not None and value.dtype.is_floating_point()


def label(node: ir.Node, *, with_op: bool = False) -> str:
    """A short name for a node: torch's '/layer1/layer1.0/conv1/Conv' → 'layer1.0.conv1'."""
    name = node.name or (node.outputs[0].name if node.outputs else "") or ""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == node.op_type:
        parts.pop()
    parts = [
        p
        for i, p in enumerate(parts)
        if i + 1 == len(parts) or not parts[i + 1].startswith(p + ".")
    ]
    text = ".".join(parts) or node.op_type
    return f"{node.op_type} {text}" if with_op else text


def pair_label(first: ir.Node, second: ir.Node) -> str:
    """'layer1.0.conv1+bn1': the second label loses the prefix both share (unless only
    a number would remain: 'stem.0+stem.1')."""
    a, b = label(first), label(second)
    shared = 0
    for x, y in zip(a.split("."), b.split(".")):
        if x != y:
            break
        shared += len(x) + 1
    rest = b[shared:]
    return f"{a}+{rest if rest and not rest.isdigit() else b}"


class NameScope:
    """Hands out value names that nothing in the graph uses yet."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = {v.name for v in graph.inputs} | set(graph.initializers)
        self.taken |= {v.name for node in graph for v in (*node.inputs, *node.outputs) if v}

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken:
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name


def set_constant_input(
    graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, names: NameScope, hint: str
) -> None:
    """Make input `index` of `node` the constant `array`.

    The old initializer is rewritten in place (keeping its name) only when
    this node is its one reader; otherwise a new initializer named after
    `hint` is added, and the old one is left for dead-code removal.
    """
    current = node.inputs[index] if index < len(node.inputs) else None
    if (
        current is not None
        and current.is_initializer()
        and not current.is_graph_input()
        and not current.is_graph_output()
        and len(current.uses()) == 1
    ):
        current.const_value = ir.tensor(array, name=current.name)
        current.shape = ir.Shape(array.shape)
        return
    tensor = ir.tensor(array, name=names.fresh(hint))
    value = ir.Value(
        name=tensor.name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype)
    )
    value.const_value = tensor
    graph.register_initializer(value)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)


def sole_reader_problem(value: ir.Value, reader: ir.Node) -> str | None:
    """Why `reader` is not the only thing that sees `value`, or None when it is."""
    producer = value.producer()
    owner = label(producer, with_op=True) if producer else repr(value.name)
    if value.is_graph_output():
        return f"the output of {owner} is also a graph output"
    others = [label(n, with_op=True) for n in value.consumers() if n is not reader]
    if others:
        return f"the output of {owner} also feeds {', '.join(sorted(set(others)))}"
    if len(value.uses()) != 1:
        return f"the output of {owner} is read more than once"
    return None


def bypass(graph: ir.Graph, node: ir.Node, source: ir.Value) -> str | None:
    """Remove `node`, whose first output equals `source`; its readers read `source`.

    Returns why this is impossible, or None when done. When the node's output
    is a graph output, `source` takes that output's name, which is impossible
    when `source` is itself a graph input, initializer or graph output (one
    value cannot carry two names). Other outputs of `node` must be unused.
    """
    result = node.outputs[0]
    for extra in node.outputs[1:]:
        if extra.uses() or extra.is_graph_output():
            return f"its output {extra.name!r} is used"
    renamed = result.is_graph_output()
    if renamed:
        if source.is_graph_input() or source.is_initializer() or source.is_graph_output():
            what = (
                "graph input"
                if source.is_graph_input()
                else "initializer"
                if source.is_initializer()
                else "graph output"
            )
            return (
                f"its output {result.name!r} is a graph output and its input "
                f"{source.name!r} is a {what}; one value cannot carry both names"
            )
    name = result.name
    if source.shape is None:
        source.shape = result.shape
    if source.type is None:
        source.type = result.type
    result.replace_all_uses_with(source, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    if renamed:
        result.name = None
        source.name = name
    return None

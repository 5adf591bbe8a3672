"""Turn a classifier into a dense predictor (FCN, Long et al. 2015).

    flatten → fc(W: units × C·H·W)  ≡  conv(kernel H×W, W reshaped to units × C × H × W)
    fc(W: units × F) on a 1×1 map   ≡  conv(kernel 1×1, W reshaped to units × F × 1 × 1)

Cases:
1. The first fc after a flatten of a C×H×W map becomes a conv with kernel
   H×W (its incoming spatial size); the flatten goes.
2. Later fc layers become 1×1 convs; pointwise layers between them (relu,
   dropout, batch norm, ...) stay and now run per position.
3. An adaptive pool feeding the flatten is the identity at the declared input
   size (AlexNet's and VGG's at 224) and is removed; any other adaptive pool
   cannot slide, so the conversion is refused.
4. A global pool (or adaptive pool to 1×1) feeding the flatten becomes an average (max) pool with
   kernel = its input size at the declared size and stride 1, which is what
   the classifier computes at every window position.

Parameters keep their names and counts; the input's H and W become open. On
an input larger than the declared size the output is a score map whose value
at (i, j) is the classifier's output on the window at (i·S, j·S), S being the
net's effective stride (exactly so when no layer pads).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from netc.compiler.ir import Graph, GraphInput, Node
from netc.compiler.ir_passes.reinfer import reinfer
from netc.compiler.symbolic import Sym
from netc.errors import UserError

POINTWISE = {"relu", "leaky_relu", "sigmoid", "tanh", "dropout", "batch_norm", "softmax"}


def _refuse(node: Node, why: str) -> UserError:
    return UserError(f"cannot make '{node.name}' fully convolutional: {why}")


def _rewrite_pool(node: Node, graph: Graph) -> Node | None:
    """Case 3 and 4: the pool feeding a flatten; None when it can simply go."""
    h, w = graph.shape_of(node.inputs[0])[2:]
    adaptive = node.op in ("adaptive_avg_pool", "adaptive_max_pool")
    if adaptive and tuple(node.attrs["output"]) == (h, w):
        return None
    if adaptive and tuple(node.attrs["output"]) != (1, 1):
        raise _refuse(
            node,
            f"adaptive pool to {list(node.attrs['output'])} from {h}x{w} "
            "does not slide; declare the input size at which it is the identity",
        )
    kind = "avg_pool" if node.op in ("global_avg_pool", "adaptive_avg_pool") else "max_pool"
    attrs: dict[str, Any] = {
        "kernel": (h, w),
        "stride": (1, 1),
        "padding": (0, 0, 0, 0),
        "dilation": (1, 1),
        "ceil_mode": False,
    }
    if kind == "avg_pool":
        attrs["count_include_pad"] = True
    return replace(node, op=kind, attrs=attrs)


def to_fully_convolutional(graph: Graph, weights: dict[str, Any]) -> tuple[Graph, dict[str, Any]]:
    """The dense-prediction form of `graph` and its reshaped weights."""
    consumers = graph.consumers()
    by_name = {node.name: node for node in graph.nodes}
    flattens = [n for n in graph.nodes if n.op == "flatten"]
    if not flattens:
        fcs = [n for n in graph.nodes if n.op == "fc"]
        if fcs:
            source = by_name.get(fcs[0].inputs[0])
            kind = source.op if source is not None else "input"
            raise _refuse(
                fcs[0],
                f"it reads a fixed-length vector from '{kind}', which has no per-position form",
            )
        raise UserError(
            f"{graph.name} has no flatten → fc classifier to convert; "
            "it is fully convolutional already"
        )
    alias: dict[str, str] = {}  # removed node → the value that replaces it
    replaced: dict[str, Node] = {}
    weights = dict(weights)
    for flatten in flattens:
        source = by_name.get(flatten.inputs[0])
        spatial = graph.shape_of(flatten.inputs[0])[2:]
        if source is not None and source.op in (
            "adaptive_avg_pool",
            "adaptive_max_pool",
            "global_avg_pool",
            "global_max_pool",
        ):
            pool = _rewrite_pool(source, graph)
            if pool is None:
                alias[source.name] = source.inputs[0]
            else:
                replaced[source.name] = pool
                spatial = (1, 1)
        alias[flatten.name] = flatten.inputs[0]
        _convert_head(flatten, spatial, consumers, by_name, replaced, weights)
    nodes = []
    for node in graph.nodes:
        if node.name in alias:
            continue
        node = replaced.get(node.name, node)
        nodes.append(replace(node, inputs=tuple(_resolve(s, alias) for s in node.inputs)))
    inputs = _open_inputs(graph.inputs)
    converted = replace(
        graph, nodes=nodes, outputs={k: _resolve(v, alias) for k, v in graph.outputs.items()}
    )
    return reinfer(converted, inputs), weights


def _open_inputs(inputs: dict[str, GraphInput]) -> dict[str, GraphInput]:
    """Every input's H and W open. A size that was already open keeps its symbol; a fixed
    size becomes H (W) for the first input and H_<name> for another, except that inputs
    which had the same fixed size share its symbol: they met the net's add or concat
    at that size, and must go on matching (the description's own rule for null)."""
    opened: dict[str, GraphInput] = {}
    symbols: list[dict[object, Sym]] = [{}, {}]  # per axis: fixed size -> its symbol
    for index, (name, item) in enumerate(inputs.items()):
        dims = list(item.shape)
        for axis, (stem, size) in enumerate(zip(("H", "W"), dims[2:4])):
            if isinstance(size, int):
                if size not in symbols[axis]:
                    symbols[axis][size] = Sym.var(stem if index == 0 else f"{stem}_{name}")
                dims[2 + axis] = symbols[axis][size]
        opened[name] = GraphInput(name, tuple(dims), item.loc)
    return opened


def _resolve(name: str, alias: dict[str, str]) -> str:
    while name in alias:
        name = alias[name]
    return name


def _convert_head(flatten: Node, spatial, consumers, by_name, replaced, weights) -> None:
    """Cases 1 and 2: walk the layers after a flatten, turning each fc into a conv."""
    frontier, seen = list(consumers[flatten.name]), set()
    while frontier:
        node = by_name[frontier.pop()]
        if node.name in seen:
            continue
        seen.add(node.name)
        if node.op not in POINTWISE and node.op != "fc":
            raise _refuse(node, f"'{node.op}' after a flatten has no per-position form")
        frontier.extend(consumers[node.name])
    for name in seen:
        if by_name[name].op == "fc":
            kernel = tuple(spatial) if _fed_by(name, flatten.name, by_name) else (1, 1)
            replaced[name] = _fc_as_conv(by_name[name], kernel, weights)


def _fed_by(name: str, flatten: str, by_name) -> bool:
    """True when `name` reads the flatten directly or through pointwise layers only."""
    node = by_name[name]
    while True:
        source = node.inputs[0]
        if source == flatten:
            return True
        node = by_name.get(source)
        if node is None or node.op not in POINTWISE:
            return False


def _fc_as_conv(node: Node, kernel, weights) -> Node:
    key = f"{node.name}.weight"
    if key in weights:
        weight = weights[key]
        units = weight.shape[0]
        flat = weight.reshape(units, -1)
        weights[key] = flat.reshape(units, flat.shape[1] // (kernel[0] * kernel[1]), *kernel)
    attrs = {
        "channels": node.attrs["units"],
        "kernel": kernel,
        "stride": (1, 1),
        "padding": (0, 0, 0, 0),
        "dilation": (1, 1),
        "groups": 1,
        "bias": node.attrs["bias"],
    }
    return replace(node, op="conv", attrs=attrs)

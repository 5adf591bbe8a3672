"""Lower an IR graph to a `torch.nn.Module` that runs the DAG.

The module is a `torch.fx.GraphModule` generated from the IR: its `forward`
is straight-line Python code (print `module.code` to read it), so running it
costs no more than a hand-written module, and DDP, autocast, channels-last
and `torch.compile` apply unchanged. Layers are registered under their
description names, so `state_dict()` keys are `conv1.weight`,
`layer1.0.conv1.weight`, ... and users find their layers.

With one output the module returns a tensor; with several, a dict keyed by
output name.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from netc.compiler.ir import Graph
from netc.runtime import layers
from netc.runtime.init import initialize


def _register(root: nn.Module, name: str, module: nn.Module) -> None:
    """Place `module` at dotted path `name`, creating plain containers on the way.

    A layer named `a` and another named `a.b` both work: `a.b` becomes a child
    of `a`'s module, which keeps its own parameters.
    """
    *parents, leaf = name.split(".")
    owner = root
    for part in parents:
        child = getattr(owner, part, None) if part in owner._modules else None
        if child is None:
            child = nn.Module()
            owner.add_module(part, child)
        owner = child
    existing = owner._modules.get(leaf)
    if existing is not None:  # a container made for deeper names: adopt its children
        for child_name, child in existing.named_children():
            module.add_module(child_name, child)
    owner.add_module(leaf, module)


def build_module(graph: Graph, *, seed: int | None = None) -> fx.GraphModule:
    """A freshly initialised PyTorch module computing `graph`.

    `seed` makes the initial weights reproducible without touching the
    global RNG.
    """
    root = nn.Module()
    fx_graph = fx.Graph()
    values: dict[str, fx.Node] = {}
    for name in graph.inputs:
        values[name] = fx_graph.placeholder(_py_name(name))
    shapes = {name: item.shape for name, item in graph.inputs.items()}
    consumers = graph.consumers()
    kept = set(graph.inputs) | set(graph.outputs.values())
    for node in graph.nodes:
        args = tuple(values[source] for source in node.inputs)
        in_shapes = [shapes[source] for source in node.inputs]
        if node.op == "add":
            value = fx_graph.call_function(layers.add, args)
        elif node.op == "concat":
            value = fx_graph.call_function(torch.cat, (list(args), node.attrs["axis"]))
        elif node.op == "crop":
            value = fx_graph.call_function(layers.crop, (*args, *node.attrs["offset"]))
        else:
            sole_reader = (
                len(node.inputs) == 1
                and node.inputs[0] not in kept
                and len(consumers[node.inputs[0]]) == 1
            )
            _register(root, node.name, layers.make_layer(node, in_shapes, inplace=sole_reader))
            value = fx_graph.call_module(node.name, args)
        value.name = _py_name(node.name)
        values[node.name] = value
        shapes[node.name] = node.shape
    outputs = {out: values[source] for out, source in graph.outputs.items()}
    fx_graph.output(next(iter(outputs.values())) if len(outputs) == 1 else outputs)
    module = fx.GraphModule(root, fx_graph, class_name=_class_name(graph.name))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    initialize(module, graph, generator)
    return module


def _py_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in _py_name(name).split("_")) or "Network"

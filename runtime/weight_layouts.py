"""How other libraries name the layers of the zoo's networks, and which naming a file uses.

A layout maps each netc layer name of a network to the module path another
library gives the same layer; a parameter key is the layer's name plus
`.weight`, `.bias`, `.running_mean`, ... in both. The zoo keeps torchvision's
module paths wherever its description language allows, so most tables are the
identity; the two that are not:

- vgg11, vgg16, vgg19: torchvision's `features.{k}`, the k-th module of its
  `features` list, is the k-th layer of the description (`conv1.0.conv`,
  `conv1.0.relu`, `pool1`, ...);
- densenet121 (torchvision's and timm's): `features.denseblock{b}.denselayer{l}.{x}`
  is `denseblock{b}.{l-1}.{x}`, and every other `features.{x}` (conv0, norm0,
  transition{t}.*, norm5) is `{x}`.

alexnet, googlenet and resnet18/34/50 name every layer as torchvision does;
timm's resnet18/50 and densenet121 name theirs as torchvision's. A network
without a table (a description of one's own) reads every layout by its netc
names. torchvision's older DenseNet files spell `norm1` as `norm.1` (the
names torchvision itself renames on load); both read.

Detection maps the file's keys through every layout and keeps the one under
which most tensors match a parameter of the network by name and shape (ties
go to netc, then torchvision, then timm: they are the same names).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from netc.compiler.ir import Graph
from netc.errors import UserError, did_you_mean

LAYOUTS = ("netc", "torchvision", "timm")

_PREFIX_OPS = ("conv", "relu", "max_pool")  # what torchvision's VGG `features` list holds


def _vgg(graph: Graph) -> dict[str, str]:
    """features.{k} is the k-th layer, up to the first that is not a conv, relu or pool."""
    table = {}
    for index, node in enumerate(graph.nodes):
        if node.op not in _PREFIX_OPS:
            break
        table[node.name] = f"features.{index}"
    return table


_DENSE_LAYER = re.compile(r"denseblock(\d+)\.(\d+)\.(.+)")


def _densenet(graph: Graph) -> dict[str, str]:
    table = {}
    for node in graph.nodes:
        match = _DENSE_LAYER.fullmatch(node.name)
        if match:
            block, layer, rest = match.groups()
            table[node.name] = f"features.denseblock{block}.denselayer{int(layer) + 1}.{rest}"
        elif node.name != "classifier":
            table[node.name] = f"features.{node.name}"
    return table


# A table: netc layer name -> the library's, for the layers whose names differ
Table = Callable[[Graph], dict[str, str]]

TABLES: dict[str, dict[str, Table]] = {
    "torchvision": {
        "alexnet": lambda graph: {},
        "vgg11": _vgg,
        "vgg16": _vgg,
        "vgg19": _vgg,
        "googlenet": lambda graph: {},
        "resnet18": lambda graph: {},
        "resnet34": lambda graph: {},
        "resnet50": lambda graph: {},
        "densenet121": _densenet,
    },
    "timm": {
        "resnet18": lambda graph: {},
        "resnet50": lambda graph: {},
        "densenet121": _densenet,
    },
}

# torchvision's DenseNet files before 0.4: `denselayer1.norm.1.weight` for `norm1.weight`
_LEGACY_DENSE_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _legacy_fixed(key: str) -> str:
    match = _LEGACY_DENSE_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


@dataclass
class Mapped:
    """A file's tensors under netc's names, and the foreign names they came from."""

    layout: str
    detected: bool
    tensors: dict[str, torch.Tensor]  # netc key -> tensor
    origin: dict[str, str]  # netc key -> the file's key
    same_as: list[str]  # other layouts that map this file to the same names


def _split(key: str) -> tuple[str, str]:
    layer, _, param = key.rpartition(".")
    return layer, param


def map_keys(tensors: dict[str, torch.Tensor], graph: Graph, layout: str) -> Mapped:
    """`tensors` renamed from `layout`'s names to netc's (keys of no known layer kept as
    they are, for the report to name)."""
    if layout == "netc":
        return Mapped(layout, False, dict(tensors), {k: k for k in tensors}, [])
    table = TABLES[layout].get(graph.name)
    foreign_to_netc = {v: k for k, v in (table(graph) if table else {}).items()}
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in tensors.items():
        layer, param = _split(_legacy_fixed(key))
        name = f"{foreign_to_netc.get(layer, layer)}.{param}"
        mapped[name], origin[name] = tensor, key
    return Mapped(layout, False, mapped, origin, [])


def _score(mapped: Mapped, target: dict[str, torch.Tensor]) -> int:
    return sum(
        1
        for key, tensor in mapped.tensors.items()
        if key in target and tuple(target[key].shape) == tuple(tensor.shape)
    )


def check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UserError(
            f"--weights-layout '{layout}' is not a layout netc knows; one of "
            + ", ".join(LAYOUTS)
            + (f"\n  hint: {hint}" if (hint := did_you_mean(layout, LAYOUTS)) else "")
        )
    return layout


def to_netc(
    tensors: dict[str, torch.Tensor],
    graph: Graph,
    target: dict[str, torch.Tensor],
    layout: str | None = None,
) -> Mapped:
    """`tensors` under netc's names: by `layout` when given, else by the layout that
    matches most of `target` (the network's state_dict) by name and shape."""
    if layout is not None:
        check_layout(layout)
        return map_keys(tensors, graph, layout)
    candidates = [map_keys(tensors, graph, name) for name in LAYOUTS]
    scores = [_score(candidate, target) for candidate in candidates]
    best = candidates[scores.index(max(scores))]  # first of the best: netc, torchvision, timm
    best.detected = True
    names = _names(best.layout, graph)
    best.same_as = [  # layouts that name this network's layers as the one found does
        other for other in LAYOUTS if other != best.layout and _names(other, graph) == names
    ]
    return best


def _names(layout: str, graph: Graph) -> dict[str, str] | None:
    """How `layout` names the layers of `graph` where netc's differ; None when it does
    not know the network."""
    if layout == "netc":
        return {}
    table = TABLES[layout].get(graph.name)
    return None if table is None else table(graph)

"""Start from trained weights: load them by layer name, report what matched.

Fine-tuning usually changes the head: layers whose names and shapes match
load, layers that are new keep their fresh initialisation, and layers whose
shape changed (a 1000-way fc becoming a 10-way one) are skipped and said so,
as are the file's layers the network does not have (torchvision's GoogLeNet
auxiliary heads, say). The weights may come from a netc run, a PyTorch
state_dict, a .safetensors file or an ONNX model (`weight_files`), named as
netc, torchvision or timm name them (`weight_layouts`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from netc.compiler.ir import Graph
from netc.errors import UserError
from netc.runtime.module import build_module
from netc.runtime.weight_files import WeightFile, read_weights
from netc.runtime.weight_layouts import Mapped, to_netc

SKIPPED_SHOWN = 20  # skipped layers listed one a line; the rest are counted


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, why)
    source: str = ""  # what was read, and in which layout (empty for a plain state dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [self.source] if self.source else []
        out.append(
            f"loaded {len(self.loaded)} layers"
            + (f": {', '.join(self.loaded)}" if len(self.loaded) <= 12 else "")
        )
        if self.new:
            out.append(f"new (freshly initialised): {', '.join(self.new)}")
        for layer, why in self.skipped[:SKIPPED_SHOWN]:
            out.append(f"skipped {layer}: {why}")
        if len(self.skipped) > SKIPPED_SHOWN:
            out.append(f"skipped {len(self.skipped) - SKIPPED_SHOWN} more layers")
        return out + self.notes


def _layer(key: str) -> str:
    return key.rsplit(".", 1)[0]


def load_by_name(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    origin: dict[str, str] | None = None,
) -> LoadReport:
    """Copy every tensor of `state` whose name and shape match into `module`.

    `origin` gives, for a key of `state`, the name the file gave it, for the report."""
    origin = origin or {}
    report = LoadReport()
    target = module.state_dict()
    layers: dict[str, list[str]] = {}
    for key in target:
        layers.setdefault(_layer(key), []).append(key)
    updated = {}
    for layer, keys in layers.items():
        present = [k for k in keys if k in state]
        if not present:
            report.new.append(layer)
            continue
        mismatch = [k for k in present if state[k].shape != target[k].shape]
        if mismatch:
            k = mismatch[0]
            report.skipped.append(
                (
                    layer,
                    f"shape {tuple(state[k].shape)} in the checkpoint, "
                    f"{tuple(target[k].shape)} here ({k.rsplit('.', 1)[1]})",
                )
            )
            continue
        updated.update({k: state[k] for k in present})
        report.loaded.append(layer)
    unknown: dict[str, None] = {}  # the file's layers with no layer of that name here
    for key in state:
        if _layer(key) not in layers:
            unknown.setdefault(_layer(origin.get(key, key)), None)
    report.skipped += [(layer, "unknown key (no layer of that name here)") for layer in unknown]
    module.load_state_dict({**target, **updated})
    return report


def load_weights(
    module: nn.Module, graph: Graph, source: str, layout: str | None, flag: str
) -> LoadReport:
    """Load the weights in `source` (any `read_weights` reads) into `module` by layer
    name, in `layout` (None: detected); UserError when not one layer matches."""
    weights = read_weights(source)
    mapped = to_netc(weights.tensors, graph, module.state_dict(), layout)
    return _load_mapped(module, graph, weights, mapped, source, flag)


def module_with_weights(
    graph: Graph, source: str, layout: str | None, flag: str, seed: int = 0
) -> tuple[nn.Module, LoadReport]:
    """A module computing `graph` with the weights of `source` loaded (as `load_weights`).
    It is initialised (from `seed`) only when the file leaves a tensor out: drawing random
    weights that are all replaced costs seconds for a 100M-parameter network."""
    with torch.device("meta"):  # names and shapes only: nothing allocated
        skeleton = build_module(graph)
    weights = read_weights(source)
    shapes = skeleton.state_dict()
    mapped = to_netc(weights.tensors, graph, shapes, layout)
    complete = fills_every_tensor(skeleton) and all(
        key in mapped.tensors and mapped.tensors[key].shape == value.shape
        for key, value in shapes.items()
        if not key.endswith("num_batches_tracked")
    )
    if not complete:
        module = build_module(graph, seed=seed)
        return module, _load_mapped(module, graph, weights, mapped, source, flag)
    module = skeleton.to_empty(device="cpu")
    for name, buffer in module.named_buffers():
        if name.endswith("num_batches_tracked") and name not in mapped.tensors:
            buffer.zero_()  # to_empty left it unset; a file without it means none counted
    return module, _load_mapped(module, graph, weights, mapped, source, flag)


def fills_every_tensor(module: nn.Module) -> bool:
    """Whether loading a state_dict sets every tensor of `module`: not so when a layer
    keeps a buffer out of its state_dict, which `to_empty` would leave unset."""
    return not any(layer._non_persistent_buffers_set for layer in module.modules())


def _load_mapped(
    module: nn.Module, graph: Graph, weights: WeightFile, mapped: Mapped, source: str, flag: str
) -> LoadReport:
    report = load_by_name(module, mapped.tensors, mapped.origin)
    how = "detected" if mapped.detected else "given"
    same = f"; {' and '.join(mapped.same_as)} name them alike" if mapped.same_as else ""
    report.source = (
        f"read {len(weights.tensors)} tensors ({weights.kind}), "
        f"layout {mapped.layout} ({how}{same})"
    )
    reshaped = sum(1 for _, why in report.skipped if why.startswith("shape"))
    layers = len(report.loaded) + len(report.new) + reshaped
    many = reshaped > max(1, len(report.loaded) / 4) or 2 * len(report.loaded) < layers
    if report.loaded and many:  # a new head reshapes a layer or two, not a quarter of them
        report.notes.append(
            f"note: {len(report.loaded)} of the network's {layers} layers loaded and "
            f"{reshaped} have other shapes in {source}: is it a checkpoint of another network?"
        )
    if weights.kind == "ONNX initializers":
        norms = [
            name
            for name in report.new
            if isinstance(module.get_submodule(name), nn.modules.batchnorm._BatchNorm)
        ]
        if norms:  # torch.onnx.export's optimizer folds batch norms into the convs before
            report.notes.append(
                f"note: the ONNX model has no tensors for the batch norms {', '.join(norms[:5])}"
                + (" ..." if len(norms) > 5 else "")
                + "; an exporter that folded them into the convs before them left those "
                "convs' weights scaled by them"
            )
    if not report.loaded:
        raise UserError(
            f"{flag} {source}: no layer of {graph.name} matches the checkpoint by name and "
            "shape; nothing would be loaded\n"
            + "\n".join(f"  {line}" for line in report.lines())
            + "\n  hint: --weights-layout netc, torchvision or timm says how the file names "
            "its layers"
        )
    return report

"""Every layer's output for a batch, keyed by the description's layer names.

The module is a `torch.fx.GraphModule` lowered from the IR in the IR's node
order, so its call nodes pair one to one with the graph's nodes; an
`fx.Interpreter` runs it and keeps what each node returned.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from netc.errors import UserError, did_you_mean
from netc.runtime.inspect.source import Model


class _Recorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, names: dict[str, str], keep: set[str] | None):
        super().__init__(module)
        self.names, self.keep = names, keep
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        value = super().run_node(n)
        layer = self.names.get(n.name)
        if layer is not None and (self.keep is None or layer in self.keep):
            self.values[layer] = value
        return value


def _layer_names(model: Model) -> dict[str, str]:
    calls = [n for n in model.module.graph.nodes if n.op not in ("placeholder", "output")]
    return {n.name: node.name for n, node in zip(calls, model.graph.nodes)}


def record(
    model: Model, inputs: torch.Tensor, layers: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """The named layers' outputs (every layer's when None) for `inputs`.

    Runs with autograd on when `inputs` requires grad, so callers can take
    gradients with respect to recorded outputs (Grad-CAM, the probe).
    """
    keep = None if layers is None else set(layers)
    recorder = _Recorder(model.module, _layer_names(model), keep)
    recorder.run(inputs)
    return recorder.values


def check_layer(model: Model, name: str, flag: str) -> str:
    """`name` if the network has that layer, else a UserError naming the flag and a hint."""
    names = [node.name for node in model.graph.nodes]
    if name in names:
        return name
    hint = did_you_mean(name, names)
    raise UserError(
        f"{flag} {name}: {model.graph.name} has no layer '{name}'"
        + (f"\n  hint: {hint}" if hint else f"\n  hint: its layers are {', '.join(names)}")
    )


def spatial_layers(model: Model) -> list[str]:
    """Layers whose output is a (N, C, H, W) map: the ones with pictures to show."""
    return [layer.name for layer in model.analysis.layers if len(layer.shape) == 4]


def conv_layers(model: Model) -> list[str]:
    return [node.name for node in model.graph.nodes if node.op in ("conv", "conv_transpose")]


MAP_OPS = ("conv", "conv_transpose", "max_pool", "avg_pool")


def map_layers(model: Model) -> list[str]:
    """Conv and pooling layers: the feature maps `--image` draws by default."""
    return [node.name for node in model.graph.nodes if node.op in MAP_OPS]

"""Start from a trained model: load weights by layer name, report what matched.

Fine-tuning usually changes the head: layers whose names and shapes match
load, layers that are new keep their fresh initialisation, and layers whose
shape changed (a 1000-way fc becoming a 10-way one) are skipped and said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer, why)

    def lines(self) -> list[str]:
        out = [
            f"loaded {len(self.loaded)} layers"
            + (f": {', '.join(self.loaded)}" if len(self.loaded) <= 12 else "")
        ]
        if self.new:
            out.append(f"new (freshly initialised): {', '.join(self.new)}")
        for layer, why in self.skipped:
            out.append(f"skipped {layer}: {why}")
        return out


def _layer(key: str) -> str:
    return key.rsplit(".", 1)[0]


def load_by_name(module: nn.Module, state: dict[str, torch.Tensor]) -> LoadReport:
    """Copy every tensor of `state` whose name and shape match into `module`."""
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
    module.load_state_dict({**target, **updated})
    return report

"""Layers picked by name patterns: `training.freeze` and `training.lr_multipliers`.

A pattern is a shell-style wildcard over layer names (`fnmatch`: `*`, `?`,
`[...]`), and a pattern also takes every layer under it, so `layer1` means a
block's every layer (`layer1.0.conv1`, ...) as `layer1.*` does. A pattern that
matches no layer is a ConfigError naming it: a typo must not silently train
what it meant to freeze.

Freezing for the first N epochs (`freeze: {layers: [...], epochs: N}`) keeps
those parameters in the optimizer and turns their gradients off until epoch N
is done; their batch norms use their running statistics meanwhile, as
`trainable: false` layers do. `epochs` unset freezes them for the whole run,
exactly as `trainable: false` in the description would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from torch import nn

from netc.errors import ConfigError, did_you_mean


def matches(layer: str, pattern: str) -> bool:
    return fnmatchcase(layer, pattern) or fnmatchcase(layer, pattern + ".*")


def layers_matching(module: nn.Module, pattern: str, key: str) -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of `module` that `pattern` picks; ConfigError on `key` when
    none does."""
    found = [
        (name, layer) for name, layer in module.named_modules() if name and matches(name, pattern)
    ]
    if not found:
        names = [name for name, layer in module.named_modules() if name]
        raise ConfigError(
            key,
            "matches no layer of the network",
            found=f"'{pattern}'",
            hint=did_you_mean(pattern, names),
        )
    return found


def layer_of(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def multiplier_for(parameter_name: str, multipliers: dict[str, float]) -> float:
    """The lr multiplier of the first pattern (in the order written) that picks the
    parameter's layer; 1 when none does."""
    layer = layer_of(parameter_name)
    for pattern, value in multipliers.items():
        if matches(layer, pattern):
            return value
    return 1.0


def check_patterns(module: nn.Module, patterns: list[str], key: str) -> None:
    for pattern in patterns:
        layers_matching(module, pattern, f"{key}['{pattern}']")


@dataclass
class Freeze:
    """Layers frozen by pattern, for the first `epochs` epochs (None: the whole run)."""

    epochs: int | None
    layers: list[nn.Module] = field(default_factory=list)

    @classmethod
    def select(cls, module: nn.Module, patterns: list[str], epochs: int | None) -> Freeze:
        """The layers `patterns` pick that the description leaves trainable."""
        chosen: dict[int, nn.Module] = {}
        for pattern in patterns:
            for _, layer in layers_matching(module, pattern, f"training.freeze['{pattern}']"):
                if not getattr(layer, "netc_frozen", False):
                    chosen.setdefault(id(layer), layer)
        return cls(epochs, list(chosen.values()))

    def apply(self, epoch: int | None) -> None:
        """Frozen or not for `epoch` (None: before training, for a whole-run freeze)."""
        frozen = self.epochs is None or (epoch is not None and epoch <= self.epochs)
        for layer in self.layers:
            # torch types Module attributes as tensors or modules; any value may be set
            layer.netc_frozen = frozen  # type: ignore[assignment]
            for param in layer.parameters(recurse=False):
                param.requires_grad_(not frozen)

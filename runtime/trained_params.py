"""What trains, and how fast: `training.freeze`, `training.lr_multipliers` and the optimizer.

Kept apart from the session so that the epoch loop reads as the list of steps
it is; the patterns themselves are `netc.runtime.layer_patterns`.
"""

from __future__ import annotations

import torch
from torch import nn

from netc.errors import ConfigError
from netc.runtime import distributed as distrib
from netc.runtime.config import TrainConfig
from netc.runtime.layer_patterns import Freeze, check_patterns
from netc.runtime.optim import build_optimizer


def freeze_and_optimizer(
    module: nn.Module, config: TrainConfig, world: distrib.World
) -> tuple[Freeze, torch.optim.Optimizer]:
    """`training.freeze` and the optimizer over what trains (with `lr_multipliers`). Layers
    frozen for the whole run stay out of the optimizer, as `trainable: false` ones do;
    layers frozen for the first epochs are in it, and `Freeze.apply` turns them on."""
    freeze = Freeze.select(module, config.freeze["layers"], config.freeze["epochs"])
    if freeze.layers and freeze.epochs is not None and world.distributed:
        raise ConfigError(
            "training.freeze.epochs",
            "a freeze for the first epochs is not supported with several processes "
            "(DDP fixes the trained parameters when it starts)",
            hint="freeze for the whole run (drop epochs), or train in one process",
        )
    if freeze.epochs is None:
        freeze.apply(None)
    check_patterns(module, list(config.lr_multipliers), "training.lr_multipliers")
    optimizer = build_optimizer(module, config.optimizer, lr_multipliers=config.lr_multipliers)
    return freeze, optimizer

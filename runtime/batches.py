"""How an epoch is cut into batches, and whether a batch can feed the network's batch norms.

Every batch is full, as with PyTorch's `DataLoader(drop_last=True)`: a short last
batch would give a batch norm fewer values than the others, and one sample over
(N, C) none to compute statistics from. The samples left over sit out the epoch
(different ones each epoch, by the shuffle), and the run says so once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from netc.console import say
from netc.errors import ConfigError
from netc.runtime import distributed as distrib
from netc.runtime.pk_sampler import PK, choose_pk
from netc.runtime.prepare import PreparedRun
from netc.runtime.preprocess import balanced_sampler


def _short_of_values(
    module: nn.Module, sample: torch.Tensor, batch: int
) -> list[tuple[str, tuple[int, ...]]]:
    """The batch norms (name, input shape without N) that would see fewer than two values
    per channel in a batch of `batch`: torch's "Expected more than 1 value per channel
    when training". A norm sees N·H·W values per channel, so only a batch of one through
    a norm over (N, C) or a 1x1 map fails; one eval-mode pass over `sample` (one image)
    finds their input shapes. Frozen norms use running statistics and never fail."""
    found: list[tuple[str, tuple[int, ...]]] = []

    def watch(name: str):
        def hook(layer: nn.Module, args: tuple) -> None:
            if batch * math.prod(args[0].shape[2:]) < 2:
                found.append((name, tuple(args[0].shape[1:])))

        return hook

    handles = [
        layer.register_forward_pre_hook(watch(name))
        for name, layer in module.named_modules()
        if isinstance(layer, nn.modules.batchnorm._BatchNorm)
        and not getattr(layer, "netc_frozen", False)
    ]
    try:
        if handles:
            module.eval()
            with torch.no_grad():
                module(sample)
    finally:
        for handle in handles:
            handle.remove()
        module.train()
    return found


def check_batch_statistics(module: nn.Module, run: PreparedRun, world: distrib.World) -> None:
    """Refuse, before anything is written, a batch too small for a batch norm's statistics."""
    batch = run.config.batch_size // world.size
    if batch >= 2:  # N·H·W >= 2 whatever the sizes
        return
    sample = run.train_set.images[:1].to(next(module.parameters()).device)
    short = _short_of_values(module, sample, batch)
    if not short:
        return
    name, shape = short[0]
    per_process = f" per process ({world.size} processes)" if world.distributed else ""
    raise ConfigError(
        "training.batch_size",
        f"a batch of {batch}{per_process} gives batch_norm layer '{name}' one value per "
        f"channel (its input is (N, {', '.join(map(str, shape))})), and batch statistics "
        "need at least two\n"
        f"  hint: --batch-size {2 * world.size} or more, or freeze the layer "
        "(trainable: false: it keeps its running statistics)",
    )


def say_left_out(run: PreparedRun, quiet: bool) -> None:
    """Every batch is full (as DataLoader's drop_last): a short last batch would give a
    batch norm too few values (one sample over (N, C) fails outright)."""
    count, batch = len(run.train_set), run.config.batch_size
    left = count % batch
    if left:
        say(
            f"note: each epoch leaves out {left} of the {count} training samples (different "
            f"ones each epoch), so that every batch holds {batch}",
            quiet,
        )


def epoch_batches(
    count: int,
    batch: int,
    generator: torch.Generator,
    sampler_labels: torch.Tensor | None,
    seed: int,
) -> list[torch.Tensor]:
    if sampler_labels is not None:
        order = torch.tensor(list(balanced_sampler(sampler_labels, count, seed)))
    else:
        order = torch.randperm(count, generator=generator)
    usable = count - count % batch  # drop the ragged last batch (see say_left_out)
    return list(order[:usable].split(batch))


def pk_shape(run: PreparedRun, quiet: bool) -> PK | None:
    """The P×K shape of the run's batches (netc.runtime.pk_sampler), said once; None for
    plain shuffled (or class-balanced) batches."""
    config, task = run.config, run.network.graph.task
    if task == "segmentation":
        if config.samples_per_class:
            raise ConfigError(
                "training.samples_per_class",
                "P×K batches need one class label per sample; a segmentation set has masks",
            )
        return None
    classes = int(torch.unique(run.train_set.targets).numel())
    loss = config.loss
    if isinstance(config.losses, dict) and config.losses:
        first = next(iter(config.losses.values()))
        loss = first.get("loss", loss) if isinstance(first, dict) else loss
    pk = choose_pk(config.samples_per_class, config.batch_size, classes, task, loss)
    if pk is not None:
        say(
            f"note: P×K batches: {pk.per_class} samples of each of {pk.classes} classes "
            "(training.samples_per_class)",
            quiet,
        )
    return pk

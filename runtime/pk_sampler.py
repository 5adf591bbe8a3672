"""P×K batches: every batch holds exactly K samples of each of P classes.

Contrastive and triplet losses learn only from the pairs a batch holds: a
random batch of 64 digits has ~6 of each class, a random batch of a 1,000-class
set almost no positive pairs. A P×K batch (Hermans, Beyer & Leibe 2017) makes
every anchor have K-1 positives and (P-1)·K negatives.

Within an epoch no sample is drawn twice while its class has unused samples:
each class's samples are shuffled into a queue that is refilled (reshuffled)
only when it runs out, and each batch takes the P classes with the most
unused samples left (ties broken at random), so the classes are used up evenly.
A class with fewer than K samples repeats some within the batch. An epoch has
as many batches as the split holds full batches, like the plain shuffle.

`training.samples_per_class: K` turns it on (P = batch_size / K); embedding
networks trained with a contrastive or triplet loss use it unless told
otherwise (`samples_per_class: 0`), with the largest P ≤ the class count that
divides the batch (K = batch_size / P ≥ 2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from netc.errors import ConfigError

PAIR_LOSSES = ("contrastive", "triplet")


@dataclass(frozen=True)
class PK:
    classes: int  # P
    per_class: int  # K


def _loss_name(loss) -> str | None:
    return loss.get("type") if isinstance(loss, dict) else loss


def choose_pk(
    samples_per_class: int | None, batch: int, classes: int, task: str, loss
) -> PK | None:
    """The P×K shape a run's batches take, or None for plain shuffled batches."""
    key = "training.samples_per_class"
    if samples_per_class == 0:
        return None
    if samples_per_class is None:
        name = _loss_name(loss) or ("triplet" if task == "embedding" else None)
        if task != "embedding" or name not in PAIR_LOSSES:
            return None
        for p in range(min(classes, batch // 2), 1, -1):
            if batch % p == 0:
                return PK(p, batch // p)
        return None
    if batch % samples_per_class:
        raise ConfigError(
            key,
            f"does not divide the batch size {batch}: a P×K batch holds K samples of each "
            "of P classes",
            found=str(samples_per_class),
            hint=f"--batch-size {samples_per_class * max(2, batch // samples_per_class)}",
        )
    p = batch // samples_per_class
    if p > classes:
        raise ConfigError(
            key,
            f"a batch of {batch} with {samples_per_class} per class needs {p} classes; the "
            f"training split has {classes}",
            found=str(samples_per_class),
            hint=f"samples_per_class: {-(-batch // classes)} or more, or a smaller batch",
        )
    return PK(p, samples_per_class)


def pk_batches(
    labels: torch.Tensor, shape: PK, batches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """`batches` index tensors of P·K samples each: K of each of P classes."""
    labels = labels.cpu()
    present = torch.unique(labels).tolist()
    members = {c: torch.nonzero(labels == c).flatten() for c in present}
    queues: dict[int, list[int]] = {c: [] for c in present}

    def refill(c: int) -> None:
        """A new round of class c's samples, those still queued last: the next K taken
        are distinct whenever the class has K samples."""
        order = members[c][torch.randperm(len(members[c]), generator=generator)].tolist()
        queued = set(queues[c])
        queues[c] += [i for i in order if i not in queued] + [i for i in order if i in queued]

    for c in present:
        refill(c)
    result = []
    for _ in range(batches):
        tie = torch.rand(len(present), generator=generator).tolist()
        ranked = sorted(range(len(present)), key=lambda i: (-len(queues[present[i]]), tie[i]))
        batch: list[int] = []
        for i in ranked[: shape.classes]:
            c = present[i]
            while len(queues[c]) < shape.per_class:
                refill(c)
            batch += queues[c][: shape.per_class]
            del queues[c][: shape.per_class]
        result.append(torch.tensor(batch, dtype=torch.long))
    return result

"""Several outputs, each with its own loss and weight: `training.losses`.

    training:
      losses:
        fc: {loss: cross_entropy}               # weight 1
        aux1: {loss: cross_entropy, weight: 0.3}
        aux2: {loss: cross_entropy, weight: 0.3}

The training loss is Σ weight_k · loss_k(output_k, targets), as GoogLeNet's
auxiliary classifiers (weight 0.3) and HED's deep supervision trained.
Outputs without an entry are evaluation-only: no loss, no gradient.
An entry without `loss` takes `training.loss` (or the task's default). The
first output is the network's prediction: the figures (accuracy, mean IoU,
val_loss) are the first output's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from netc.errors import ConfigError, describe, did_you_mean
from netc.runtime.losses import Loss, build_loss
from netc.runtime.options import Options

KEY = "training.losses"


@dataclass
class Term:
    output: str
    loss: Loss
    weight: float


class OutputLosses:
    """The weighted sum of the terms' losses on a module's outputs (a dict by output
    name, or one tensor for a one-output net)."""

    def __init__(self, terms: list[Term], first: str) -> None:
        self.terms, self.first = terms, first

    def __call__(self, outputs: Tensor | dict[str, Tensor], targets: Tensor) -> Tensor:
        named = outputs if isinstance(outputs, dict) else {self.first: outputs}
        total: Tensor | None = None
        for term in self.terms:
            value = term.weight * term.loss(named[term.output].float(), targets)
            total = value if total is None else total + value
        assert total is not None  # build_output_losses refuses an empty mapping
        return total

    def __repr__(self) -> str:
        return " + ".join(f"{t.weight:g}·{t.loss.name}({t.output})" for t in self.terms)


def build_output_losses(
    section: Any, default: Any, *, outputs: list[str], task: str, num_classes: int
) -> OutputLosses:
    """The `training.losses` mapping {output: {loss, weight}} checked against the
    network's `outputs`; `default` is `training.loss`, for entries without their own."""
    if not isinstance(section, dict) or not section:
        raise ConfigError(
            KEY,
            "must map output names to losses",
            expected="{output: {loss: NAME, weight: W}, ...}",
            found=describe(section),
        )
    terms = []
    for output, entry in section.items():
        key = f"{KEY}.{output}"
        if output not in outputs:
            raise ConfigError(
                key,
                "is not an output of the network",
                expected="one of " + ", ".join(outputs),
                found=f"'{output}'",
                hint=did_you_mean(str(output), outputs),
            )
        if not isinstance(entry, dict):
            raise ConfigError(
                key, "must be a mapping", expected="{loss: NAME, weight: W}", found=describe(entry)
            )
        for name in entry:
            if name not in ("loss", "weight"):
                raise ConfigError(
                    f"{key}.{name}",
                    "unknown key",
                    expected="loss or weight",
                    found=f"'{name}'",
                    hint=did_you_mean(str(name), ("loss", "weight")),
                )
        weight = Options(entry, key).number("weight", 1.0, low=0)
        loss = build_loss(
            entry.get("loss", default), task=task, num_classes=num_classes, key=f"{key}.loss"
        )
        terms.append(Term(str(output), loss, weight))
    return OutputLosses(terms, outputs[0])


def first_output(outputs: Tensor | dict[str, Tensor]) -> Tensor:
    """The network's prediction: its only output, or its first."""
    return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs

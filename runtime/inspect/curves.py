"""Training curves from a run's metrics.jsonl: loss, the task's figure, learning rate.

Rows carry `loss` and `val_loss`, `train_accuracy`/`val_accuracy` (or
`train_mean_iou`/`val_mean_iou`), `lr` and `seconds`; runs from before the
val_ names carry `accuracy`/`mean_iou`, read as the validation figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netc.errors import UserError
from netc.runtime.inspect import tiles
from netc.runtime.metrics import upgrade_row

WIDTH, HEIGHT = 960, 320
PANELS = (
    ("loss", (("loss", "training"), ("val_loss", "validation"))),
    ("accuracy", (("train_accuracy", "training"), ("val_accuracy", "validation"))),
    ("mean IoU", (("train_mean_iou", "training"), ("val_mean_iou", "validation"))),
    ("learning rate", (("lr", "lr"),)),
)


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for number, row in enumerate(rows, 1):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(float(row.get("epoch", number)))
            ys.append(float(value))
    return xs, ys


def panels(rows: list[dict[str, Any]]) -> list[tuple[str, list]]:
    """The panels with data: (title, [(label, xs, ys), ...])."""
    rows = [upgrade_row(row) for row in rows]
    found = []
    for title, keys in PANELS:
        lines = [(label, *_series(rows, key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if lines:
            found.append((title, lines))
    return found


def save(history: list[dict[str, Any]], path: Path, name: str) -> Path:
    """curves.png: one panel per figure the run recorded, epochs along x."""
    if not history:
        raise UserError(f"--curves: {name} has no training history (no metrics.jsonl rows)")
    found = panels(history)
    figure = tiles.new_figure(WIDTH, HEIGHT)
    for index, (title, lines) in enumerate(found, 1):
        axes = figure.add_subplot(1, len(found), index)
        for label, xs, ys in lines:
            axes.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3, label=label)
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch", fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if title == "learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        elif len(lines) > 1:
            axes.legend(fontsize=7)
    last = upgrade_row(history[-1])
    summary = ", ".join(
        f"{key} {last[key]:.4g}"
        for key in ("val_accuracy", "val_mean_iou", "val_loss")
        if isinstance(last.get(key), (int, float))
    )
    figure.suptitle(
        f"{name}: {len(history)} epochs" + (f"; last {summary}" if summary else ""), fontsize=10
    )
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    tiles.save_figure(figure, path)
    return path

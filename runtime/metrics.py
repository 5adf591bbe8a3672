"""The task's figures: accuracy for classifiers, mean IoU for segmentation.

Validation figures are named `val_accuracy` and `val_mean_iou` (beside `val_loss`),
training figures `train_accuracy` and `train_mean_iou` (beside `loss`), as Keras and
Lightning name them; runs written before that used `accuracy` and `mean_iou` for the
validation figures, and `upgrade_row` renames those.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def correct_count(scores: torch.Tensor, labels: torch.Tensor) -> int:
    return int((scores.argmax(dim=1) == labels).sum())


def confusion_matrix(scores: torch.Tensor, masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts of (true, predicted) pixel pairs; pixels labelled 255 are ignored."""
    predicted = scores.argmax(dim=1).flatten()
    truth = masks.flatten()
    keep = truth != IGNORE_INDEX
    index = truth[keep] * num_classes + predicted[keep]
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes present in truth or prediction of TP / (TP + FP + FN)."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    return float((true_positive[present] / union[present]).mean()) if present.any() else 0.0


OLD_NAMES = {"accuracy": "val_accuracy", "mean_iou": "val_mean_iou"}


def upgrade_row(row: dict) -> dict:
    """A metrics row with the validation figures under their val_ names (old runs had none)."""
    return {OLD_NAMES.get(key, key): value for key, value in row.items()}


class TrainingFigures:
    """The task's figure over an epoch's training batches, from the scores each step
    computed anyway: what the network got right while it learned (train mode, augmented
    images), so it lags and can differ from the validation figure for those reasons too."""

    def __init__(self, task: str, num_classes: int) -> None:
        self.task, self.num_classes = task, num_classes
        self.correct, self.seen = 0, 0
        self.confusion: torch.Tensor | None = None

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        scores = scores.detach()
        if self.task == "classification":
            self.correct += correct_count(scores, targets)
            self.seen += len(targets)
        elif self.task == "segmentation":
            counts = confusion_matrix(scores, targets, self.num_classes)
            self.confusion = counts if self.confusion is None else self.confusion + counts

    def result(self) -> dict[str, float]:
        if self.task == "classification" and self.seen:
            return {"train_accuracy": self.correct / self.seen}
        if self.task == "segmentation" and self.confusion is not None:
            return {"train_mean_iou": mean_iou(self.confusion.cpu())}
        return {}

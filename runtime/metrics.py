"""Validation metrics: accuracy for classifiers, mean IoU for segmentation."""

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

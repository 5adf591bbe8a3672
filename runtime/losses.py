"""Training losses: `build_loss(config, task=..., num_classes=...)` → `loss(outputs, targets)`.

Each loss maps a batch of network outputs and targets to a scalar tensor and
checks the targets first: a wrong shape, dtype or class index is a `UserError`
naming what was expected and found (on CUDA a bad index would otherwise be an
opaque device-side assert).

| loss | task | outputs | targets |
| --- | --- | --- | --- |
| cross_entropy | classification | scores (N, K) | labels (N,) |
| hinge | classification | scores (N, K) | labels (N,) |
| l1, l2 | classification, segmentation | (N, K, ...) | labels (N, ...) or floats (N, K, ...) |
| contrastive, triplet | embedding | embeddings (N, D) | labels (N,) |
| pixel_cross_entropy | segmentation | scores (N, K, H, W) | masks (N, H, W) |
| binary_cross_entropy | classification, segmentation | logits (N, 1, ...) | 0/1 labels (N, ...) |

l1 and l2 turn labels into one-hot vectors. Labels are any integer dtype; every
loss averages ("mean" reduction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from netc.errors import ConfigError, InternalError, UserError, describe, did_you_mean
from netc.runtime.options import Options, parse_typed

# Added under square roots of squared distances: d/dx sqrt(x) is infinite at 0,
# and a batch may hold identical embeddings.
DISTANCE_EPS = 1e-12

TASK_DEFAULTS = {
    "classification": "cross_entropy",
    "segmentation": "pixel_cross_entropy",
    "embedding": "triplet",
}


def _shape(tensor: Tensor) -> str:
    return str(tuple(tensor.shape))


class Loss:
    """A training loss: `loss(outputs, targets)` is a scalar tensor; `name` is its setting."""

    name = ""

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({options})"

    def _error(self, message: str, expected: str, found: str) -> UserError:
        return UserError(f"loss {self.name}: {message} (expected {expected}, found {found})")

    def _outputs(
        self,
        outputs: Tensor,
        layout: str,
        *,
        dims: int,
        exact: bool = True,
        num_classes: int | None = None,
    ) -> None:
        """Check the network's outputs: `dims` dimensions (at least, unless `exact`) and
        `num_classes` scores along dimension 1."""
        if outputs.dim() < dims or (exact and outputs.dim() != dims):
            raise self._error("the network's outputs have the wrong shape", layout, _shape(outputs))
        if num_classes is not None and outputs.shape[1] != num_classes:
            raise self._error(
                f"the network gives {outputs.shape[1]} scores per example, "
                f"the data has {num_classes} classes",
                f"{num_classes} along dimension 1",
                _shape(outputs),
            )

    def _labels(
        self,
        targets: Tensor,
        shape: tuple[int, ...],
        layout: str,
        num_classes: int | None,
        ignore_index: int | None = None,
    ) -> Tensor:
        """Integer targets of `shape`, each in [0, num_classes) or `ignore_index`, as int64."""
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise self._error(
                "targets must be integer class labels",
                f"integer labels {layout}",
                f"{targets.dtype} {_shape(targets)}",
            )
        if tuple(targets.shape) != shape:
            raise self._error(
                "targets have the wrong shape", f"{layout} = {shape}", _shape(targets)
            )
        if num_classes is not None and targets.numel():
            bad = (targets < 0) | (targets >= num_classes)
            if ignore_index is not None:
                bad &= targets != ignore_index
            if bad.any():
                expected = f"labels in 0..{num_classes - 1}"
                if ignore_index is not None:
                    expected += f" or {ignore_index} (ignore_index)"
                raise self._error(
                    "a target is not a class index",
                    expected,
                    f"label {int(targets[bad].flatten()[0])}",
                )
        return targets.long()


def _weights(weights: list[float] | None, like: Tensor) -> Tensor | None:
    if weights is None:
        return None
    return torch.tensor(weights, dtype=like.dtype, device=like.device)


class CrossEntropy(Loss):
    """Softmax cross-entropy, optionally label-smoothed and class-weighted (torch semantics:
    with weights the mean divides by the summed weights of the examples' true classes)."""

    name = "cross_entropy"

    def __init__(
        self, num_classes: int, label_smoothing: float, class_weights: list[float] | None
    ) -> None:
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.class_weights = class_weights

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, K)", dims=2, num_classes=self.num_classes)
        labels = self._labels(targets, tuple(outputs.shape[:1]), "(N,)", self.num_classes)
        return F.cross_entropy(
            outputs,
            labels,
            weight=_weights(self.class_weights, outputs),
            label_smoothing=self.label_smoothing,
        )


class Hinge(Loss):
    """Multi-class SVM loss (Weston-Watkins, as in CS231n), averaged over examples:

        L_i = sum over j != y_i of max(0, s_j - s_{y_i} + margin)^p

    This is C·F.multi_margin_loss(s, y, p, margin): torch also divides by the
    class count C; we keep CS231n's scale, so `margin` and the lr mean the same
    as there.
    """

    name = "hinge"

    def __init__(self, num_classes: int, margin: float, p: int) -> None:
        self.num_classes, self.margin, self.p = num_classes, margin, p

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, K)", dims=2, num_classes=self.num_classes)
        labels = self._labels(targets, tuple(outputs.shape[:1]), "(N,)", self.num_classes)
        correct = outputs.gather(1, labels[:, None])
        margins = (outputs - correct + self.margin).clamp_min(0)
        margins = margins.scatter(1, labels[:, None], 0.0)  # the sum skips j = y_i
        if self.p == 2:
            margins = margins.square()
        return margins.sum(1).mean()


class Regression(Loss):
    """l1 (mean |o - t|) or l2 (mean (o - t)²) over every element of the outputs.

    Integer targets are class labels (N, ...) and become one-hot along the
    outputs' dimension 1; float targets must have the outputs' shape.
    """

    def __init__(self, name: str, num_classes: int) -> None:
        self.name, self.num_classes = name, num_classes

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, K, ...)", dims=2, exact=False)
        if targets.is_floating_point():
            if targets.shape != outputs.shape:
                raise self._error(
                    "float targets must have the outputs' shape", _shape(outputs), _shape(targets)
                )
            goal = targets.to(outputs.dtype)
        else:
            self._outputs(outputs, "(N, K, ...)", dims=2, exact=False, num_classes=self.num_classes)
            shape = (outputs.shape[0], *outputs.shape[2:])
            layout = "(N,)" if outputs.dim() == 2 else "(N, H, W)"
            labels = self._labels(targets, shape, layout, self.num_classes)
            goal = F.one_hot(labels, self.num_classes).movedim(-1, 1).to(outputs.dtype)
        if self.name == "l1":
            return F.l1_loss(outputs, goal)
        return F.mse_loss(outputs, goal)


def _distances(embeddings: Tensor) -> Tensor:
    """Pairwise squared Euclidean distances (N, N), from differences, not the Gram trick,
    which loses precision for near neighbours; cdist's gradient is 0 at distance 0."""
    return torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist").square()


class Contrastive(Loss):
    """Contrastive loss (Hadsell, Chopra & LeCun 2006) over every pair i < j of the batch:

        L_ij = y·d² + (1 - y)·max(0, margin - d)²,  y = [label_i == label_j]

    with d the Euclidean distance, averaged over the N(N-1)/2 pairs (no ½ factors).
    A batch with fewer than 2 examples gives 0.
    """

    name = "contrastive"

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, D)", dims=2, exact=False)
        embeddings = outputs.flatten(1)
        labels = self._labels(targets, tuple(outputs.shape[:1]), "(N,)", None)
        i, j = torch.triu_indices(len(labels), len(labels), 1, device=outputs.device)
        squared = _distances(embeddings)[i, j]
        distance = (squared + DISTANCE_EPS).sqrt()
        pushed = (self.margin - distance).clamp_min(0).square()
        pair_losses = torch.where(labels[i] == labels[j], squared, pushed)
        if pair_losses.numel() == 0:
            return outputs.sum() * 0.0
        return pair_losses.mean()


class Triplet(Loss):
    """Batch-all triplet loss (Schroff et al. 2015; Hermans et al. 2017):

        L_apn = max(0, d(a, p) - d(a, n) + margin)

    over every triplet of the batch with label[a] == label[p], a != p and
    label[n] != label[a], d Euclidean. The mean is over the triplets with
    positive loss: averaging over all valid triplets would shrink the gradient
    as training makes most of them easy. No such triplet gives 0.

    `mining: hard` takes, per anchor, only its hardest positive and negative
    (batch-hard); `mining: semi_hard`, per (anchor, positive) pair, the
    nearest negative farther than the positive (FaceNet's); both want P×K
    batches (netc.runtime.pk_sampler).
    """

    name = "triplet"

    def __init__(self, margin: float, mining: str = "all") -> None:
        self.margin, self.mining = margin, mining

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, D)", dims=2, exact=False)
        embeddings = outputs.flatten(1)
        labels = self._labels(targets, tuple(outputs.shape[:1]), "(N,)", None)
        distance = (_distances(embeddings) + DISTANCE_EPS).sqrt()
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        if self.mining == "hard":
            return _batch_hard(distance, positive, ~same, self.margin)
        if self.mining == "semi_hard":
            return _semi_hard(distance, positive, ~same, self.margin)
        valid = positive[:, :, None] & ~same[:, None, :]  # (a, p, n)
        losses = (distance[:, :, None] - distance[:, None, :] + self.margin).clamp_min(0)
        losses = losses * valid
        # Inactive triplets add 0 to the sum; dividing by their count avoids a host sync.
        active = (losses > 0).sum().clamp_min(1)
        return losses.sum() / active


def _batch_hard(distance: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """Batch-hard mining (Hermans et al. 2017): per anchor, its farthest positive and
    nearest negative, max(0, d(a, p*) - d(a, n*) + margin), averaged over the anchors
    that have both."""
    far = torch.where(positive, distance, torch.zeros_like(distance)).amax(1)
    near = torch.where(negative, distance, torch.full_like(distance, torch.inf)).amin(1)
    usable = positive.any(1) & negative.any(1)
    losses = (far - near + margin).clamp_min(0)[usable]
    return losses.mean() if losses.numel() else distance.sum() * 0.0


def _semi_hard(distance: Tensor, positive: Tensor, negative: Tensor, margin: float) -> Tensor:
    """Semi-hard mining (Schroff et al. 2015, as TensorFlow's triplet_semihard_loss): per
    (anchor, positive) pair, the nearest negative farther than the positive; without one,
    the farthest negative. max(0, d(a, p) - d(a, n) + margin), averaged over the pairs."""
    d_ap = distance[:, :, None]  # (a, p, 1)
    d_an = distance[:, None, :]  # (a, 1, n)
    farther = negative[:, None, :] & (d_an > d_ap)
    semi = torch.where(farther, d_an, torch.full_like(d_an, torch.inf)).amin(2)
    fallback = torch.where(negative, distance, torch.full_like(distance, -torch.inf)).amax(1)
    chosen = torch.where(farther.any(2), semi, fallback[:, None].expand_as(semi))
    usable = positive & negative.any(1, keepdim=True)
    losses = (distance - chosen + margin).clamp_min(0)[usable]
    return losses.mean() if losses.numel() else distance.sum() * 0.0


class PixelCrossEntropy(Loss):
    """Per-pixel softmax cross-entropy for segmentation, skipping `ignore_index` pixels.

    The mean is over counted pixels (with class weights: divided by their summed
    weights, as torch does); a batch with every pixel ignored gives 0, not NaN.
    """

    name = "pixel_cross_entropy"

    def __init__(
        self, num_classes: int, ignore_index: int, class_weights: list[float] | None
    ) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_weights = class_weights

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        self._outputs(outputs, "(N, K, H, W)", dims=4, num_classes=self.num_classes)
        if targets.dim() == 3 and targets.shape[1:] != outputs.shape[2:]:
            raise self._error(
                "shape mismatch between the network's output and the masks: the output "
                "must have the masks' height and width",
                f"output {outputs.shape[2]}x{outputs.shape[3]} (H x W)",
                f"masks {targets.shape[1]}x{targets.shape[2]}",
            )
        shape = (outputs.shape[0], *outputs.shape[2:])
        labels = self._labels(targets, shape, "(N, H, W)", self.num_classes, self.ignore_index)
        weight = _weights(self.class_weights, outputs)
        total = F.cross_entropy(
            outputs, labels, weight=weight, ignore_index=self.ignore_index, reduction="sum"
        )
        counted = labels != self.ignore_index
        if weight is None:
            denominator = counted.sum().to(total.dtype)
        else:
            denominator = (weight[labels.clamp(0, self.num_classes - 1)] * counted).sum()
        return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy of one logit per example or pixel against 0/1 labels:

        L = -[w·y·log σ(o) + (1 - y)·log(1 - σ(o))],  w = pos_weight

    averaged over the counted examples or pixels (`ignore_index` ones are not
    counted). `pos_weight` > 1 makes positives count more, as HED weighs its
    rare edge pixels. Outputs (N, 1, ...) (or (N,)); targets labels (N, ...).
    """

    name = "binary_cross_entropy"

    def __init__(self, pos_weight: float, ignore_index: int) -> None:
        self.pos_weight, self.ignore_index = pos_weight, ignore_index

    def __call__(self, outputs: Tensor, targets: Tensor) -> Tensor:
        logits = outputs[:, 0] if outputs.dim() >= 2 else outputs
        if outputs.dim() >= 2 and outputs.shape[1] != 1:
            raise self._error(
                "the network must give one logit per example (or pixel)",
                "(N, 1, ...) outputs",
                _shape(outputs),
            )
        layout = "(N,)" if logits.dim() == 1 else "(N, H, W)"
        labels = self._labels(targets, tuple(logits.shape), layout, 2, self.ignore_index)
        counted = labels != self.ignore_index
        goal = (labels == 1).to(logits.dtype)
        weight = torch.tensor(self.pos_weight, dtype=logits.dtype, device=logits.device)
        losses = F.binary_cross_entropy_with_logits(
            logits, goal, pos_weight=weight, reduction="none"
        )
        total = (losses * counted).sum()
        return total / counted.sum().clamp_min(1)


# loss name → (tasks it serves, its options)
LOSSES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cross_entropy": (("classification",), ("label_smoothing", "class_weights")),
    "hinge": (("classification",), ("margin", "p")),
    "l1": (("classification", "segmentation"), ()),
    "l2": (("classification", "segmentation"), ()),
    "contrastive": (("embedding",), ("margin",)),
    "triplet": (("embedding",), ("margin", "mining")),
    "pixel_cross_entropy": (("segmentation",), ("ignore_index", "class_weights")),
    "binary_cross_entropy": (("classification", "segmentation"), ("pos_weight", "ignore_index")),
}


def _class_weights(options: Options, num_classes: int) -> list[float] | None:
    return options.numbers("class_weights", None, length=num_classes, low=0, low_open=True)


MINING = ("all", "hard", "semi_hard")


def _mining(options: Options) -> str:
    value = options.values.get("mining", "all")
    if value not in MINING:
        raise ConfigError(
            f"{options.key}.mining",
            "unknown triplet mining",
            expected=", ".join(MINING),
            found=describe(value),
            hint=did_you_mean(str(value), MINING),
        )
    return value


def _make(name: str, options: Options, num_classes: int) -> Loss:
    if name == "cross_entropy":
        return CrossEntropy(
            num_classes,
            options.number("label_smoothing", 0.0, low=0, high=1, high_open=True),
            _class_weights(options, num_classes),
        )
    if name == "hinge":
        margin = options.number("margin", 1.0, low=0, low_open=True)
        p = options.number("p", 1, integer=True, low=1, high=2)
        return Hinge(num_classes, margin, p)
    if name in ("l1", "l2"):
        return Regression(name, num_classes)
    if name in ("contrastive", "triplet"):
        margin = options.number(
            "margin", 1.0 if name == "contrastive" else 0.2, low=0, low_open=True
        )
        if name == "contrastive":
            return Contrastive(margin)
        return Triplet(margin, _mining(options))
    if name == "pixel_cross_entropy":
        return PixelCrossEntropy(
            num_classes,
            options.number("ignore_index", 255, integer=True),
            _class_weights(options, num_classes),
        )
    if name == "binary_cross_entropy":
        return BinaryCrossEntropy(
            options.number("pos_weight", 1.0, low=0, low_open=True),
            options.number("ignore_index", 255, integer=True),
        )
    raise InternalError(f"loss '{name}' is listed but has no builder")


def build_loss(
    config: str | dict[str, Any] | None, *, task: str, num_classes: int, key: str = "training.loss"
) -> Loss:
    """The loss a `training.loss` setting names: `name` or `{type: name, option: value}`.

    Unset (or a mapping without `type`), the task picks it: classification →
    cross_entropy, segmentation → pixel_cross_entropy, embedding → triplet.
    `num_classes` sizes `class_weights` and the label checks. A bad setting is a
    `ConfigError` on `key`.
    """
    if task not in TASK_DEFAULTS:
        raise InternalError(f"build_loss: unknown task '{task}'")
    types = {name: options for name, (_, options) in LOSSES.items()}
    name, options = parse_typed(config, key, types=types, default=TASK_DEFAULTS[task], what="loss")
    tasks = LOSSES[name][0]
    if task not in tasks:
        hint = "pixel_cross_entropy is cross-entropy per pixel" if name == "cross_entropy" else None
        type_key = f"{key}.type" if isinstance(config, dict) else key
        raise ConfigError(
            type_key,
            f"loss '{name}' does not fit a {task} network",
            expected=" or ".join(n for n, (t, _) in LOSSES.items() if task in t),
            found=f"'{name}' (a {' / '.join(tasks)} loss)",
            hint=hint,
        )
    return _make(name, options, num_classes)

"""The accuracy gate: what a reduced-precision model costs on held-out data, in the task's terms.

Exact equality no longer holds once weights and activations are rounded to
8 bits, so instead of an elementwise proof the gate runs the fp32 model and
the reduced one in onnxruntime (CPU provider, ORT_ENABLE_ALL: the integer
kernels a server would use) on the held-out images and measures:

- the task metric before and after: top-1 accuracy for classifiers, mean IoU
  over classes (runtime.metrics.mean_iou) for segmentation;
- top-1 agreement: the share of images (or pixels) where both models pick the
  same class.

It passes when the metric drops by at most `max_drop` points (1 point = 0.01
accuracy or IoU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from netc.compiler.optimizer.calibration import Samples
from netc.errors import UserError

MAX_DROP = 1.0  # points of accuracy or IoU


@dataclass(frozen=True)
class GateResult:
    metric: str  # "accuracy" | "mean IoU"
    before: float  # 0..1
    after: float
    agreement: float  # share of images (pixels) where both models pick the same class
    max_drop: float  # points
    held_out: str  # what it was measured on, for the report

    @property
    def drop(self) -> float:
        """Points lost (negative when the reduced model scores higher)."""
        return 100.0 * (self.before - self.after)

    @property
    def ok(self) -> bool:
        return self.drop <= self.max_drop + 1e-9

    def summary(self) -> str:
        return (
            f"{self.metric} {100 * self.before:.2f}% → {100 * self.after:.2f}% on "
            f"{self.held_out} (drop {self.drop:.2f} points, allowed {self.max_drop:g}); "
            f"top-1 agreement with fp32 {100 * self.agreement:.2f}%"
        )


def session(model: bytes) -> ort.InferenceSession:
    """A CPU session with onnxruntime's full graph optimizations, as a server runs it."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def predictions(model: bytes, samples: Samples, what: str) -> np.ndarray:
    """The class each held-out image (or pixel) gets: (n,) or (n, H, W)."""
    try:
        run = session(model)
        picked = [
            _scores(run.run(None, {samples.input_name: x})[0], samples).argmax(axis=1)
            for x in samples.batches(samples.inputs)
        ]
    except UserError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:300]
        raise UserError(f"onnxruntime cannot run {what} on the held-out images: {text}") from None
    return np.concatenate(picked)


def _scores(scores: np.ndarray, samples: Samples) -> np.ndarray:
    """The model's first output as (n, K) or (n, K, H, W) scores matching the targets."""
    scores = np.asarray(scores, dtype=np.float32)
    want = samples.targets.ndim + 1
    if scores.ndim == 4 and want == 2 and scores.shape[2:] == (1, 1):
        scores = scores[:, :, 0, 0]  # a fully convolutional classifier
    if scores.ndim != want:
        raise UserError(
            f"the model's first output has shape {list(scores.shape)}; a {samples.task} "
            f"model's scores should have {want} dims"
        )
    if scores.shape[1] != len(samples.classes):
        raise UserError(
            f"the model's first output has {scores.shape[1]} classes, the data set "
            f"{len(samples.classes)}"
        )
    if want == 4 and scores.shape[2:] != samples.targets.shape[1:]:
        import torch
        import torch.nn.functional as F

        size = tuple(samples.targets.shape[1:])
        scores = F.interpolate(torch.from_numpy(scores), size=size, mode="bilinear").numpy()
    return scores


def metric(picked: np.ndarray, samples: Samples) -> float:
    """Accuracy (classification) or mean IoU (segmentation), 0..1."""
    import torch

    from netc.runtime.metrics import IGNORE_INDEX, mean_iou

    if samples.task == "classification":
        return float(np.mean(picked == samples.targets))
    k = len(samples.classes)
    truth, guess = samples.targets.reshape(-1), picked.reshape(-1)
    keep = truth != IGNORE_INDEX
    counts = np.bincount(truth[keep] * k + guess[keep], minlength=k * k).reshape(k, k)
    return mean_iou(torch.from_numpy(counts))


def gate(
    original: bytes, reduced: bytes, samples: Samples, *, max_drop: float = MAX_DROP
) -> GateResult:
    """Both models on the held-out images: metric before and after, agreement."""
    before = predictions(original, samples, "the fp32 model")
    after = predictions(reduced, samples, "the reduced-precision model")
    return GateResult(
        metric="accuracy" if samples.task == "classification" else "mean IoU",
        before=metric(before, samples),
        after=metric(after, samples),
        agreement=float(np.mean(before == after)),
        max_drop=max_drop,
        held_out=samples.describe(),
    )

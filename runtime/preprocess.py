"""Input preprocessing fitted on the training split, augmentation and class-balanced sampling.

`Preprocessing` is stored with the model (as JSON-safe `to_dict()`), so that
inference applies exactly what training applied: resize, per-channel
normalisation, optional ZCA whitening.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, WeightedRandomSampler

from netc.errors import ConfigError, DataError

ZCA_EPSILON = 1e-2
"""Added to the covariance eigenvalues before inverting their square roots.

Inputs are per-channel normalised first (unit variance), so 1e-2 damps only the
directions holding under ~1% of a pixel's variance — mostly noise, which
whitening would otherwise amplify without bound.
"""

ZCA_MAX_FEATURES = 4096
"""Whitening stores a D x D matrix (D = C·H·W); beyond 4096 it is too big to be worth it."""

IGNORE_LABEL = 255


@dataclass
class Preprocessing:
    """What to do to an image batch before the network sees it.

    `mean`/`std` are per channel; `input_size` (H, W), when set, is the size
    images are resized to first (bilinear, no antialiasing); `pca` is a D x D
    ZCA whitening matrix applied to flattened normalised images after
    subtracting `pca_mean` (D = C·H·W).
    """

    mean: list[float]
    std: list[float]
    input_size: tuple[int, int] | None = None
    pca: torch.Tensor | None = None
    pca_mean: torch.Tensor | None = None

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) or (C, H, W) float images in [0, 1] → network inputs of the same rank."""
        single = images.dim() == 3
        x = images.unsqueeze(0) if single else images
        if x.dim() != 4 or x.shape[1] != len(self.mean):
            raise DataError(
                f"input images must be (N, {len(self.mean)}, H, W), found {tuple(images.shape)}"
            )
        x = x.float()
        if self.input_size is not None and tuple(x.shape[2:]) != tuple(self.input_size):
            size = tuple(self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        if self.pca is not None:
            x = whiten(x, self.pca, self.pca_mean)
        return x[0] if single else x

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (tensors as nested lists) for checkpoints and model repositories."""
        return {
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "input_size": list(self.input_size) if self.input_size is not None else None,
            "pca": self.pca.tolist() if self.pca is not None else None,
            "pca_mean": self.pca_mean.tolist() if self.pca_mean is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of `to_dict`; a missing or malformed entry is a DataError naming it."""
        for key in ("mean", "std"):
            if not isinstance(data.get(key), list) or not data[key]:
                raise DataError(
                    f"preprocessing: '{key}' must be a non-empty list, found {data.get(key)!r}"
                )
        if len(data["mean"]) != len(data["std"]):
            raise DataError(
                f"preprocessing: mean has {len(data['mean'])} channels but std has "
                f"{len(data['std'])}"
            )
        size = data.get("input_size")
        pca, pca_mean = data.get("pca"), data.get("pca_mean")
        return cls(
            mean=[float(v) for v in data["mean"]],
            std=[float(v) for v in data["std"]],
            input_size=(int(size[0]), int(size[1])) if size is not None else None,
            pca=torch.tensor(pca, dtype=torch.float32) if pca is not None else None,
            pca_mean=torch.tensor(pca_mean, dtype=torch.float32) if pca_mean is not None else None,
        )


def whiten(x: torch.Tensor, pca: torch.Tensor, pca_mean: torch.Tensor | None) -> torch.Tensor:
    """ZCA on flattened images: (x - pca_mean) @ pcaᵀ, reshaped back."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != pca.shape[0]:
        raise DataError(
            f"whitening expects {pca.shape[0]} values per image (C·H·W), "
            f"found {flat.shape[1]} from images of shape {tuple(x.shape[1:])}"
        )
    if pca_mean is not None:
        flat = flat - pca_mean.to(device=x.device, dtype=x.dtype)
    return (flat @ pca.to(device=x.device, dtype=x.dtype).T).reshape(x.shape)


def fit_preprocessing(
    train_images: torch.Tensor,
    *,
    normalize: bool | dict[str, list[float]],
    pca_whitening: bool,
    input_size: tuple[int, int] | None = None,
) -> Preprocessing:
    """Fit on the training split only, so validation numbers are honest.

    Per-channel mean/std over (N, H, W) when `normalize` is true (a constant
    channel gets std 1 rather than a division by zero), mean 0 and std 1 when
    false, and as given when it is {"mean": [...], "std": [...]} (one value for
    every channel or one per channel: a pretrained net's statistics). With
    `pca_whitening`, ZCA on the flattened normalised images:
    W = U diag(1/sqrt(λ + ZCA_EPSILON)) Uᵀ from the covariance's eigenvectors U
    and eigenvalues λ; refused when C·H·W > ZCA_MAX_FEATURES.
    """
    if train_images.dim() != 4 or train_images.shape[0] == 0:
        raise DataError(
            f"cannot fit preprocessing: expected a non-empty (N, C, H, W) training split, "
            f"found shape {tuple(train_images.shape)}"
        )
    x = train_images.float()
    if input_size is not None:
        input_size = (int(input_size[0]), int(input_size[1]))
        if tuple(x.shape[2:]) != input_size:
            x = F.interpolate(x, size=input_size, mode="bilinear", align_corners=False)
    channels = x.shape[1]
    if isinstance(normalize, dict):
        mean, std = (_given(normalize, key, channels) for key in ("mean", "std"))
    elif normalize:
        mean = x.double().mean(dim=(0, 2, 3))
        std = x.double().std(dim=(0, 2, 3), correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
    else:
        mean, std = torch.zeros(channels), torch.ones(channels)
    pre = Preprocessing(mean.tolist(), std.tolist(), input_size)
    if pca_whitening:
        pre.pca, pre.pca_mean = _fit_zca(pre.apply(x))
    return pre


def _given(normalize: dict[str, list[float]], key: str, channels: int) -> torch.Tensor:
    values = [float(v) for v in normalize[key]]
    if len(values) not in (1, channels):
        raise ConfigError(
            f"training.normalize.{key}",
            f"has {len(values)} values for images of {channels} channels",
            expected=f"one value, or {channels}",
            found=str(values),
        )
    return torch.tensor(values * (channels // len(values)), dtype=torch.float64)


def _fit_zca(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D x D ZCA matrix, per-feature mean) of normalised images x (N, C, H, W)."""
    c, h, w = x.shape[1:]
    features = c * h * w
    if features > ZCA_MAX_FEATURES:
        raise ConfigError(
            "training.pca_whitening",
            "ZCA whitening needs a D x D matrix (D = C·H·W) and this input is too large; "
            "turn it off or use a smaller training.input_size",
            expected=f"C·H·W <= {ZCA_MAX_FEATURES}",
            found=f"{c}x{h}x{w} = {features}",
        )
    flat = x.reshape(x.shape[0], -1).double()
    mean = flat.mean(dim=0)
    centred = flat - mean
    cov = centred.T @ centred / flat.shape[0]
    eigenvalues, vectors = torch.linalg.eigh(cov)
    scale = (eigenvalues.clamp(min=0) + ZCA_EPSILON).rsqrt()
    return (vectors * scale) @ vectors.T, mean.float()


class Augment:
    """Random crops (zero padding) and horizontal flips of a batch, masks moved alike.

    Crop: pad by `crop_padding` on every side with 0 (masks with the ignore label
    255, so padded pixels count for nothing), then take the original size at a
    per-sample random offset — a shift of up to ±crop_padding pixels. Flip: each
    sample mirrored left-right with probability 1/2. Masks are recognised as
    (N, H, W) targets matching the images; other targets pass through unchanged.
    All randomness comes from `generator` (a CPU generator), so a given state
    gives the same batch on any device.
    """

    def __init__(
        self,
        crop_padding: int = 0,
        hflip: bool = False,
        resized_crop: dict[str, list[float]] | None = None,
    ) -> None:
        if crop_padding < 0:
            raise ConfigError(
                "training.augment.crop_padding",
                "must not be negative",
                expected="an integer >= 0",
                found=str(crop_padding),
            )
        self.crop_padding = int(crop_padding)
        self.hflip = bool(hflip)
        self.resized_crop = resized_crop

    def __repr__(self) -> str:
        return (
            f"Augment(crop_padding={self.crop_padding}, hflip={self.hflip}, "
            f"resized_crop={self.resized_crop})"
        )

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = images.shape
        masks = targets.dim() == 3 and tuple(targets.shape) == (n, h, w)
        if self.resized_crop is not None and n > 0:
            boxes = crop_boxes(n, h, w, self.resized_crop, generator).to(images.device)
            images = resized_crops(images, boxes, "bilinear")
            if masks:
                targets = resized_crops(targets[:, None].float(), boxes, "nearest")[:, 0]
                targets = targets.round().long()
        if self.crop_padding > 0 and n > 0:
            p = self.crop_padding
            shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
            shifts = shifts.to(images.device)
            images = _crop(F.pad(images, (p, p, p, p)), shifts, h, w)
            if masks:
                padded = F.pad(targets[:, None], (p, p, p, p), value=IGNORE_LABEL)
                targets = _crop(padded, shifts, h, w)[:, 0]
        if self.hflip and n > 0:
            flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
            images = torch.where(flip.view(n, 1, 1, 1), images.flip(-1), images)
            if masks:
                targets = torch.where(flip.view(n, 1, 1), targets.flip(-1), targets)
        return images, targets


def crop_boxes(
    n: int, h: int, w: int, settings: dict[str, list[float]], generator: torch.Generator
) -> torch.Tensor:
    """(N, 4) boxes (top, left, height, width) as torchvision's RandomResizedCrop draws
    them: an area fraction uniform in `scale`, an aspect ratio log-uniform in `ratio`,
    up to 10 tries for a box that fits, else the centred box of the ratio nearest the
    image's (the whole image when it is within `ratio`)."""
    (low, high), (ratio_low, ratio_high) = settings["scale"], settings["ratio"]
    log_low, log_high = math.log(ratio_low), math.log(ratio_high)
    boxes = []
    for _ in range(n):
        for _ in range(10):
            area = h * w * (low + (high - low) * float(torch.rand(1, generator=generator)))
            ratio = math.exp(
                log_low + (log_high - log_low) * float(torch.rand(1, generator=generator))
            )
            width = round(math.sqrt(area * ratio))
            height = round(math.sqrt(area / ratio))
            if 0 < width <= w and 0 < height <= h:
                top = int(torch.randint(0, h - height + 1, (1,), generator=generator))
                left = int(torch.randint(0, w - width + 1, (1,), generator=generator))
                boxes.append((top, left, height, width))
                break
        else:
            aspect = w / h
            if aspect < ratio_low:
                width, height = w, round(w / ratio_low)
            elif aspect > ratio_high:
                width, height = round(h * ratio_high), h
            else:
                width, height = w, h
            boxes.append(((h - height) // 2, (w - width) // 2, height, width))
    return torch.tensor(boxes, dtype=torch.float32)


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, mode: str) -> torch.Tensor:
    """Each (C, H, W) sample's box, resized back to (H, W): one `grid_sample` for the
    batch. Output pixel centre u in [-1, 1] (align_corners=False) reads input
    coordinate centre + u · half-size, in the normalised coordinates of the input."""
    n, _, h, w = x.shape
    top, left, height, width = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = width / w
    theta[:, 0, 2] = (2 * left + width) / w - 1
    theta[:, 1, 1] = height / h
    theta[:, 1, 2] = (2 * top + height) / h - 1
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def _crop(padded: torch.Tensor, offsets: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample (h, w) windows of padded (N, C, H', W') at offsets (N, 2) = (top, left)."""
    n, c = padded.shape[:2]
    device = padded.device
    rows = offsets[:, 0, None] + torch.arange(h, device=device)  # (N, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=device)  # (N, w)
    batch = torch.arange(n, device=device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, channel, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def balanced_sampler(labels: torch.Tensor, num_samples: int, seed: int) -> Sampler[int]:
    """Draws (with replacement) so that every class is equally likely in each draw.

    Each sample weighs 1 / (its class's count). The generator is seeded once:
    successive epochs differ, but a run is reproducible from `seed`.
    """
    if labels.dim() != 1:
        raise ConfigError(
            "training.balanced_sampling",
            "needs one class label per sample",
            expected="a classification data set",
            found=f"targets of shape {tuple(labels.shape)}",
        )
    if labels.numel() == 0:
        raise DataError("cannot balance an empty training split")
    labels = labels.long().cpu()
    counts = torch.bincount(labels)
    weights = 1.0 / counts[labels].double()
    generator = torch.Generator().manual_seed(seed)
    # torch reads the weights with torch.as_tensor; its annotation asks for a Sequence[float]
    return WeightedRandomSampler(
        weights,  # type: ignore[arg-type]
        num_samples,
        replacement=True,
        generator=generator,
    )

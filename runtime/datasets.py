"""Data sets for training: built-ins, image folders, segmentation folders and .npz files.

Everything is loaded eagerly into one `ArrayDataset` of float32 images in [0, 1],
because the data sets netc trains on are small and a tensor in memory makes
splitting, resizing and batching trivial and deterministic. Every problem with
the data is a `DataError` whose message names the file or value at fault.
"""

from __future__ import annotations

import multiprocessing
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from netc.errors import ConfigError, DataError
from netc.runtime.shapes import SHAPE_CLASSES, draw_shapes

IGNORE_LABEL = 255
"""Mask value for pixels that no loss or metric counts (and not a class)."""

BUILTINS = ("digits", "shapes")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PARALLEL_DECODE_MIN = 200
"""Below this many files a process pool costs more than it saves."""

_GRAY_MODES = {"1", "L", "LA", "I", "F"}


@dataclass
class ArrayDataset:
    """A whole data set in memory.

    `images` is float32 (N, C, H, W) in [0, 1]; `targets` is int64, (N,) class
    labels for "classification" or (N, H, W) masks for "segmentation" (255 marks
    ignored pixels). `source` names where it came from, for messages.
    """

    images: torch.Tensor
    targets: torch.Tensor
    classes: list[str]
    task: str
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> ArrayDataset:
        """The samples at `indices`, in that order (copies; the original is untouched)."""
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return ArrayDataset(
            self.images[index], self.targets[index], list(self.classes), self.task, self.source
        )


def load_dataset(spec: str | os.PathLike[str]) -> ArrayDataset:
    """Load `spec`: a built-in name, an image-folder tree, a segmentation folder or a .npz.

    A directory with `images/` and `masks/` is a segmentation set; any other
    directory is an image-folder tree with one sub-folder per class.
    """
    text = os.fspath(spec)
    if text == "digits":
        return load_digits()
    if text == "shapes":
        return make_shapes()
    path = Path(text)
    if path.is_dir():
        if (path / "images").is_dir() and (path / "masks").is_dir():
            return _load_segmentation_folder(path)
        return _load_image_folder(path)
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(path)
        raise DataError(
            f"data set '{text}': unsupported file type '{path.suffix}' "
            "(expected a .npz file or a directory)"
        )
    raise DataError(
        f"no data set '{text}': not a built-in ({', '.join(BUILTINS)}), file or directory"
    )


# --- built-ins -------------------------------------------------------------------------


def load_digits() -> ArrayDataset:
    """scikit-learn's 1,797 8x8 handwritten digits; pixel values 0..16 scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    targets = torch.from_numpy(bunch.target.astype(np.int64))
    return ArrayDataset(images, targets, [str(d) for d in range(10)], "classification", "digits")


def make_shapes(count: int = 1200, size: int = 64, seed: int = 0) -> ArrayDataset:
    """The synthetic `shapes` segmentation set (see `netc.runtime.shapes`)."""
    images, masks = draw_shapes(count, size, seed)
    return ArrayDataset(
        torch.from_numpy(images),
        torch.from_numpy(masks),
        list(SHAPE_CLASSES),
        "segmentation",
        "shapes",
    )


# --- image files -----------------------------------------------------------------------


def _wide_grey(im) -> np.ndarray:
    """16-bit (or float) grey → uint8 on the scale the server reads it at (serving/images/decode.py:
    full range 65535, floats 0..1). PIL's convert("L") would clip everything above 255."""
    scale = 255.0 if im.mode == "F" else 255.0 / 65535.0
    values = np.asarray(im, dtype=np.float64) * scale
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _decode_image(path: str) -> tuple[np.ndarray | None, str]:
    """One file → (H, W, 1) grey or (H, W, 3) RGB uint8, or (None, reason) if it cannot be read.

    Runs in worker processes, so failures come back as text rather than exceptions.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                array = _wide_grey(im)
            else:
                array = np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB"))
    except Exception as exc:  # PIL raises many kinds on corrupt or truncated data
        return None, f"{type(exc).__name__}: {exc}"
    return array.reshape(array.shape[0], array.shape[1], -1), ""


def _decode_mask(path: str) -> tuple[np.ndarray | None, str]:
    """One single-channel PNG → (H, W) int32 class indices, or (None, reason)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("1", "L", "P", "I") and not im.mode.startswith("I;16"):
                return None, f"expected a single-channel mask, found mode {im.mode}"
            return np.asarray(im).astype(np.int32), ""
    except Exception as exc:  # PIL raises many kinds on corrupt or truncated data
        return None, f"{type(exc).__name__}: {exc}"


def _decode_all(
    decode: Callable[[str], tuple[np.ndarray | None, str]], paths: list[Path]
) -> list[np.ndarray]:
    """Decode every file, in a process pool when there are many; the first failure is raised."""
    names = [str(p) for p in paths]
    if len(names) > PARALLEL_DECODE_MIN:
        workers = max(1, min(8, os.cpu_count() or 1))
        # fork: workers need no re-import of torch; they only touch PIL and numpy.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = list(pool.map(decode, names, chunksize=max(1, len(names) // (4 * workers))))
    else:
        results = [decode(name) for name in names]
    arrays = []
    for name, (array, reason) in zip(names, results):
        if array is None:
            raise DataError(f"cannot read image '{name}': {reason}")
        arrays.append(array)
    return arrays


def _common_size(arrays: list[np.ndarray]) -> tuple[int, int]:
    """The most common (H, W); ties go to the size seen first."""
    return Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]


def _stack_images(arrays: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float in [0, 1]: grey only if every image is grey, others resized to `size`.

    Resizing uses PIL's bilinear filter, which antialiases when shrinking.
    """
    from PIL import Image

    channels = 1 if all(a.shape[2] == 1 for a in arrays) else 3
    out = np.empty((len(arrays), size[0], size[1], channels), dtype=np.uint8)
    for i, array in enumerate(arrays):
        if array.shape[:2] != size:
            resized = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
            array = np.asarray(resized.resize((size[1], size[0]), Image.Resampling.BILINEAR))
            array = array.reshape(size[0], size[1], -1)
        out[i] = array if array.shape[2] == channels else np.repeat(array, channels, axis=2)
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _load_image_folder(root: Path) -> ArrayDataset:
    """One sub-folder per class (sorted names are the classes); PNG/JPEG files inside.

    Images of different sizes are resized to the most common size; if any image
    is in colour, grey images are repeated to 3 channels.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"directory '{root}' has no class sub-folders "
            "(expected one sub-folder of images per class, or images/ and masks/)"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = _image_files(root / name)
        if not files:
            raise DataError(f"class folder '{root / name}' holds no PNG/JPEG images")
        paths += files
        labels += [label] * len(files)
    arrays = _decode_all(_decode_image, paths)
    images = _stack_images(arrays, _common_size(arrays))
    return ArrayDataset(
        images, torch.tensor(labels, dtype=torch.long), classes, "classification", str(root)
    )


def _load_segmentation_folder(root: Path) -> ArrayDataset:
    """`images/` and `masks/` whose files share stems; masks hold class indices (255 ignored).

    Class names come from `classes.txt` beside the two folders (one per line)
    when present, else they are "0".."K-1" with K = largest label + 1.
    """
    images_dir, masks_dir = root / "images", root / "masks"
    image_paths = _image_files(images_dir)
    if not image_paths:
        raise DataError(f"segmentation folder '{images_dir}' holds no PNG/JPEG images")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    mask_paths = []
    for path in image_paths:
        if path.stem not in masks:
            raise DataError(f"image '{path}' has no mask (expected '{masks_dir / path.stem}.png')")
        mask_paths.append(masks[path.stem])
    images = _decode_all(_decode_image, image_paths)
    labels = _decode_all(_decode_mask, mask_paths)
    for image, mask, ipath, mpath in zip(images, labels, image_paths, mask_paths):
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"mask '{mpath}' is {_hw(mask.shape)} but its image '{ipath}' is "
                f"{_hw(image.shape)} (H x W); a mask must match its image's size"
            )
    size = _common_size(images)
    targets = torch.from_numpy(np.stack([_resize_mask(m, size) for m in labels]).astype(np.int64))
    classes = _read_classes_file(root / "classes.txt")
    if classes is None:
        classes = _numbered_classes(targets, "segmentation", root)
    _check_labels(targets, len(classes), "segmentation", lambda i: f"mask '{mask_paths[i]}'")
    return ArrayDataset(_stack_images(images, size), targets, classes, "segmentation", str(root))


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if mask.shape == size:
        return mask
    from PIL import Image

    resized = Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return np.asarray(resized)


def _read_classes_file(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [name for name in names if name]
    if not names:
        raise DataError(f"'{path}' lists no class names (expected one name per line)")
    return names


# --- .npz ------------------------------------------------------------------------------


def _load_npz(path: Path) -> ArrayDataset:
    """Arrays `x` (N, C, H, W) or (N, H, W) and `y` (N,) or (N, H, W); optional `classes`.

    uint8 `x` is scaled by 1/255; float `x` is taken as is.
    """
    if not zipfile.is_zipfile(path):
        raise DataError(f"'{path}' is not a .npz archive (expected a zip of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read '{path}': {exc}") from None
    for name in ("x", "y"):
        if name not in arrays:
            found = ", ".join(sorted(arrays)) or "none"
            raise DataError(f"'{path}' has no array '{name}' (expected x and y, found: {found})")
    images = _npz_images(path, arrays["x"])
    targets, task = _npz_targets(path, arrays["y"], images.shape)
    if len(images) == 0:
        raise DataError(f"'{path}' holds no samples (x has length 0)")
    if "classes" in arrays:
        classes = [str(c) for c in np.asarray(arrays["classes"]).reshape(-1)]
    else:
        classes = _numbered_classes(targets, task, path)
    _check_labels(targets, len(classes), task, lambda i: f"'{path}': y[{i}]")
    return ArrayDataset(images, targets, classes, task, str(path))


def _npz_images(path: Path, x: np.ndarray) -> torch.Tensor:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"'{path}': x must be (N, C, H, W) or (N, H, W), found shape {x.shape}")
    if x.shape[1] not in (1, 3, 4) and x.shape[3] in (1, 3):
        raise DataError(
            f"'{path}': x has shape {x.shape}, which looks like (N, H, W, C); "
            "expected (N, C, H, W) — store x.transpose(0, 3, 1, 2)"
        )
    if x.dtype == np.uint8:
        return torch.from_numpy(x.astype(np.float32) / 255.0)
    if x.dtype.kind != "f":
        raise DataError(f"'{path}': x must be uint8 or float, found {x.dtype}")
    images = torch.from_numpy(x.astype(np.float32))
    if not torch.isfinite(images).all():
        raise DataError(f"'{path}': x holds NaN or infinite values")
    return images


def _npz_targets(path: Path, y: np.ndarray, image_shape: torch.Size) -> tuple[torch.Tensor, str]:
    if y.ndim not in (1, 3):
        raise DataError(f"'{path}': y must be (N,) labels or (N, H, W) masks, found {y.shape}")
    if y.shape[0] != image_shape[0]:
        raise DataError(f"'{path}': x has {image_shape[0]} samples but y has {y.shape[0]}")
    if y.ndim == 3 and tuple(y.shape[1:]) != tuple(image_shape[2:]):
        raise DataError(
            f"'{path}': masks y are {_hw(y.shape[1:])} but images x are "
            f"{_hw(tuple(image_shape[2:]))} (H x W)"
        )
    if y.dtype.kind not in "iu":
        raise DataError(f"'{path}': y must hold integer class labels, found {y.dtype}")
    task = "classification" if y.ndim == 1 else "segmentation"
    return torch.from_numpy(y.astype(np.int64)), task


# --- labels ----------------------------------------------------------------------------


def _numbered_classes(targets: torch.Tensor, task: str, source: Path) -> list[str]:
    """Classes "0".."K-1", K = largest label + 1 (the ignore label 255 of masks excluded)."""
    values = targets[targets != IGNORE_LABEL] if task == "segmentation" else targets
    if values.numel() == 0:
        raise DataError(f"'{source}': no class labels (every mask pixel is the ignore label 255)")
    return [str(i) for i in range(max(int(values.max()), 0) + 1)]


def _check_labels(
    targets: torch.Tensor, num_classes: int, task: str, where: Callable[[int], str]
) -> None:
    """Every label is in 0..num_classes-1 (255 also allowed in masks); name the first that isn't."""
    bad = (targets < 0) | (targets >= num_classes)
    if task == "segmentation":
        bad &= targets != IGNORE_LABEL
    if not bool(bad.any()):
        return
    flat = bad.reshape(len(targets), -1)
    sample = int(flat.any(dim=1).nonzero()[0])
    value = int(targets[sample].reshape(-1)[flat[sample]][0])
    valid = f"0..{num_classes - 1}" + (" or 255 (ignored)" if task == "segmentation" else "")
    kind = "negative label" if value < 0 else "label"
    raise DataError(
        f"{where(sample)}: {kind} {value} is outside the {num_classes} classes "
        f"(expected {valid}, found {value})"
    )


# --- split and resize ------------------------------------------------------------------


def split(
    dataset: ArrayDataset, val_fraction: float, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Deterministic (train, validation) split; stratified by class for classification.

    `val_fraction` 0 means no validation: (dataset, empty subset). Otherwise the
    validation set has round(N · val_fraction) samples (at least 1, at most
    N - 1), shared among classes in proportion to their sizes (largest
    remainders get the leftovers). Both halves keep the original order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(
            "training.val_fraction",
            "must be at least 0 and below 1",
            expected="0 <= val_fraction < 1",
            found=str(val_fraction),
        )
    n = len(dataset)
    if val_fraction == 0.0 or n < 2:
        return dataset, dataset.subset([])
    rng = np.random.default_rng(seed)
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    if dataset.task == "classification":
        val = _stratified_pick(dataset.targets.numpy(), n_val, rng)
    else:
        val = rng.permutation(n)[:n_val]
    is_val = np.zeros(n, dtype=bool)
    is_val[val] = True
    return dataset.subset(np.flatnonzero(~is_val)), dataset.subset(np.flatnonzero(is_val))


def _stratified_pick(labels: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n_val / len(labels)
    take = np.floor(quota).astype(np.int64)
    leftovers = n_val - int(take.sum())
    take[np.argsort(-(quota - take), kind="stable")[:leftovers]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.concatenate(picked)


def resize(dataset: ArrayDataset, size: tuple[int, int]) -> ArrayDataset:
    """Every image resized to `size` (H, W): bilinear for images, nearest for masks.

    Bilinear without antialiasing matches what an exported model's Resize does;
    masks use nearest so labels stay labels. A no-op when the size already matches.
    """
    if len(size) != 2 or any(not isinstance(v, int) or v < 1 for v in size):
        raise ConfigError(
            "training.input_size",
            "must be two positive integers [H, W]",
            expected="[H, W]",
            found=str(list(size)),
        )
    size = (int(size[0]), int(size[1]))
    if tuple(dataset.images.shape[2:]) == size:
        return dataset
    if len(dataset) == 0:
        images = dataset.images.new_zeros((0, dataset.images.shape[1], *size))
        targets = dataset.targets
        if dataset.task == "segmentation":
            targets = targets.new_zeros((0, *size))
        return ArrayDataset(images, targets, list(dataset.classes), dataset.task, dataset.source)
    images = F.interpolate(dataset.images, size=size, mode="bilinear", align_corners=False)
    targets = dataset.targets
    if dataset.task == "segmentation":
        masks = F.interpolate(targets[:, None].float(), size=size, mode="nearest-exact")
        targets = masks[:, 0].round().long()
    # Bilinear weights are a convex combination, so images stay in [0, 1].
    return ArrayDataset(images, targets, list(dataset.classes), dataset.task, dataset.source)

"""Calibration and held-out images for reduced precision, prepared as the server prepares them.

A quantized model is calibrated and judged on real pictures from a data set
(`digits`, `shapes`, an image folder, a .npz: whatever `netc train --data`
takes), passed through the model's own preprocessing from its ONNX metadata
(its model card's `netc.preprocessing`), exactly as serving/images/prepare.py does:

1. resize (bilinear, no antialiasing) to the model's fixed input size, or to
   `resize_to` for an open-size network trained at one size;
2. scaled from [0, 1] to `value_range` (netc writes [0, 1]);
3. `x = (x - mean) / std` per channel, where the metadata has them. (PCA
   whitening is part of an exported graph, so it needs nothing here.)

The data set is then split as `netc train` splits it (runtime.datasets.split):
with the validation fraction and seed a netc export records in
`netc.validation_split`, else training's defaults (0.15, seed 0), so a model
trained with default settings is judged on the very images it never trained
on. Calibration draws a seeded sample from the training part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from netc.errors import UserError
from netc.model_card import ModelCard, Preprocessing

DEFAULT_SPLIT = (0.15, 0)  # training.val_fraction and training.seed defaults (runtime/config.py)
CALIBRATION_SAMPLES = 256
HELD_OUT_LIMIT = 2000  # held-out images judged at most (a seeded sample of a larger split)
BATCH = 32
TASKS = ("classification", "segmentation")


@dataclass
class Samples:
    """Prepared model inputs: a calibration sample and a held-out set with its targets."""

    input_name: str
    calibration: np.ndarray  # (n, C, H, W) float32, preprocessed
    inputs: np.ndarray  # held-out images, preprocessed
    targets: np.ndarray  # (n,) class indices, or (n, H, W) masks (255: ignored)
    task: str  # classification | segmentation
    classes: list[str]
    dataset: str
    split: tuple[float, int]
    batch: int = BATCH  # the most images per run (1 for a model with a fixed batch of 1)

    def describe(self) -> str:
        """'270 held-out digits images (validation split 0.15, seed 0)'."""
        return (
            f"{len(self.inputs)} held-out {self.dataset} images "
            f"(validation split {self.split[0]:g}, seed {self.split[1]})"
        )

    def batches(self, images: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(images), self.batch):
            yield images[start : start + self.batch]


def load_samples(
    model: onnx.ModelProto,
    dataset: str,
    *,
    split: tuple[float, int] | None = None,
    calibration_samples: int = CALIBRATION_SAMPLES,
    name: str = "the model",
) -> Samples:
    """Calibration and held-out images of `dataset` for `model`; UserError when they do not fit.

    `split` (validation fraction, seed) overrides the one the model records.
    """
    from netc.runtime.datasets import load_dataset
    from netc.runtime.datasets import split as split_dataset

    card = ModelCard.from_model(model)
    task = card.task
    if task not in TASKS:
        raise UserError(
            f"{name}: int8 needs to know what the model computes to check its accuracy, and "
            f"its metadata says task {task!r}; netc can gate classifiers and segmentation "
            "models exported by netc (netc.task in the ONNX metadata)"
        )
    input_name, channels, size = _image_input(model, name)
    data = load_dataset(dataset)
    where = f"{name} with data set '{dataset}'"
    if data.task != task:
        raise UserError(f"{where}: the model is a {task} model, {dataset} a {data.task} data set")
    _check_classes(card, data.classes, where)
    if data.images.shape[1] != channels:
        raise UserError(
            f"{where}: the model takes {channels}-channel images, {dataset} has "
            f"{data.images.shape[1]}-channel ones"
        )
    data = _resized(data, size, card)
    split = split if split is not None else (card.validation_split or DEFAULT_SPLIT)
    train, held_out = split_dataset(data, split[0], split[1])
    if not len(held_out):
        raise UserError(
            f"{where}: validation fraction {split[0]:g} leaves no held-out images to judge "
            "the int8 model on"
        )
    rng = np.random.default_rng(split[1])
    if len(held_out) > HELD_OUT_LIMIT:
        held_out = held_out.subset(np.sort(rng.permutation(len(held_out))[:HELD_OUT_LIMIT]))
    pool = train if len(train) else held_out
    pick = np.sort(rng.permutation(len(pool))[: max(1, calibration_samples)])
    prepare = _normaliser(card, channels, where)
    return Samples(
        input_name=input_name,
        calibration=prepare(pool.images[pick].numpy()),
        inputs=prepare(held_out.images.numpy()),
        targets=held_out.targets.numpy(),
        task=task,
        classes=list(data.classes),
        dataset=str(dataset),
        split=(float(split[0]), int(split[1])),
        batch=1 if _fixed_batch(model, input_name) == 1 else BATCH,
    )


def _image_input(model: onnx.ModelProto, name: str) -> tuple[str, int, tuple[int | None, ...]]:
    """(input name, channels, (H, W) with None where open) of the one NCHW float input."""
    stored = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in stored]
    if len(inputs) != 1:
        raise UserError(
            f"{name}: calibrating on a data set needs one image input; the model has "
            f"{len(inputs)} ({', '.join(i.name for i in inputs)})"
        )
    tensor = inputs[0].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4 or not dims[1]:
        raise UserError(
            f"{name}: input {inputs[0].name!r} is not a float image batch [N, C, H, W] "
            "with a fixed channel count, so it cannot be fed data set images"
        )
    return inputs[0].name, int(dims[1]), (dims[2], dims[3])


def _fixed_batch(model: onnx.ModelProto, input_name: str) -> int | None:
    for value in model.graph.input:
        if value.name == input_name:
            first = value.type.tensor_type.shape.dim[0]
            return first.dim_value if first.HasField("dim_value") else None
    return None


def _check_classes(card: ModelCard, classes: list[str], where: str):
    labels = card.labels
    if labels is not None and list(labels) != [str(c) for c in classes]:
        shown = ", ".join(map(str, labels[:6])) + (", ..." if len(labels) > 6 else "")
        theirs = ", ".join(classes[:6]) + (", ..." if len(classes) > 6 else "")
        raise UserError(
            f"{where}: the model's labels ({shown}) are not the data set's classes ({theirs}); "
            "calibrate on the data set it was trained on"
        )


def _resized(data, size: tuple[int | None, ...], card: ModelCard):
    """Images at the size the model runs them: its fixed size, else `resize_to`."""
    from netc.runtime.datasets import resize

    resize_to = card.preprocessing.resize_to if card.preprocessing is not None else None
    if resize_to is not None:
        size = tuple(fixed or wanted for fixed, wanted in zip(size, resize_to))
    height, width = size
    if height is None or width is None:
        return data  # open size: the data set's own
    return resize(data, (height, width))


def _normaliser(card: ModelCard, channels: int, where: str):
    """(N, C, H, W) in [0, 1] → scaled to value_range, then (x - mean) / std as float32, per
    the model's card."""
    pre = card.preprocessing or Preprocessing()
    try:
        values = pre.normalisation(channels)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None
    mean, std = (
        None if v is None else np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in values
    )
    low, high = pre.value_range

    def prepare(images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        if (low, high) != (0.0, 1.0):
            x = np.float32(low) + x * np.float32(high - low)
        if mean is not None:
            x = x - mean
        if std is not None:
            x = x / std
        return np.ascontiguousarray(x, dtype=np.float32)

    return prepare

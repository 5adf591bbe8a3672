"""Training settings: the description's `training:` section, then command-line overrides.

Every key is optional and checked strictly: an unknown key, a wrong type or
an out-of-range value is a ConfigError naming `training.KEY` and, when it
came from a file, its file:line:column. The loss, optimizer and schedule
settings are passed on as written and checked by their builders.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, overload

from netc.errors import ConfigError, describe, did_you_mean
from netc.runtime.options import Options
from netc.yaml_loader import plain

TASK_METRICS = {"classification": "accuracy", "segmentation": "mean_iou", "embedding": "loss"}
# `training.metric`: a task's figure or the loss, by its short name or its metrics.jsonl one;
# either means the validation figure when there is a validation split.
METRICS = ("accuracy", "mean_iou", "loss", "val_accuracy", "val_mean_iou", "val_loss")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUGMENTATIONS = ("crop_padding", "hflip", "random_resized_crop")
RESIZED_CROP = {"scale": [0.08, 1.0], "ratio": [3 / 4, 4 / 3]}  # torchvision's defaults


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    val_fraction: float = 0.15
    seed: int = 0
    input_size: tuple[int, int] | None = None
    loss: Any = None
    losses: Any = None  # {output: {loss, weight}}: checked by netc.runtime.output_losses
    optimizer: Any = None
    schedule: Any = None
    clip_grad_norm: float | None = None
    # True: per-channel mean and std fitted on the training split; False: none; or given,
    # {"mean": [...], "std": [...]} (one value, or one per channel), as a pretrained net expects
    normalize: bool | dict[str, list[float]] = True
    pca_whitening: bool = False
    augment: dict[str, Any] = field(
        default_factory=lambda: {"crop_padding": 0, "hflip": False, "random_resized_crop": None}
    )
    balanced_sampling: bool = False
    samples_per_class: int | None = None  # P×K batches (netc.runtime.pk_sampler); 0: off
    # layer-name patterns (netc.runtime.layer_patterns) frozen for the first `epochs`
    # epochs, or the whole run when epochs is None
    freeze: dict[str, Any] = field(default_factory=lambda: {"layers": [], "epochs": None})
    lr_multipliers: dict[str, float] = field(default_factory=dict)  # pattern -> × lr
    metric: str | None = None
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None  # torch's CPU threads; None: measured (netc.runtime.threads)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(self.input_size) if self.input_size else None
        return plain(data)


KEYS = tuple(TrainConfig.__dataclass_fields__)


def parse_training(section: Any, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Check a `training:` mapping (or None), apply overrides, return the settings."""
    section = section or {}
    for key in section:
        if key not in KEYS:
            raise ConfigError(
                f"training.{key}",
                "unknown training setting",
                expected="one of " + ", ".join(KEYS),
                found=f"'{key}'",
                hint=did_you_mean(key, KEYS),
                loc=section.key_loc(key) if hasattr(section, "key_loc") else None,
            )
    values = dict(section)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "lr":
            values["optimizer"] = _with_lr(values.get("optimizer"), value)
        else:
            values[key] = value
    read = Options(values, "training")
    augment = values.get("augment") or {}
    if not isinstance(augment, dict):
        raise ConfigError(
            "training.augment",
            "must be a mapping",
            expected="{crop_padding: N, hflip: true}",
            found=describe(augment),
        )
    aug = Options(augment, "training.augment")
    for key in augment:
        if key not in AUGMENTATIONS:
            raise ConfigError(
                f"training.augment.{key}",
                "unknown augmentation",
                expected=", ".join(AUGMENTATIONS),
                found=f"'{key}'",
                hint=did_you_mean(key, AUGMENTATIONS),
            )
    return TrainConfig(
        epochs=read.number("epochs", 10, low=1, integer=True),
        batch_size=read.number("batch_size", 64, low=1, integer=True),
        val_fraction=read.number("val_fraction", 0.15, low=0, high=1, high_open=True),
        seed=read.number("seed", 0, low=0, high=2**31 - 1, integer=True),
        input_size=_input_size(values.get("input_size")),
        loss=plain(values.get("loss")),
        losses=plain(values.get("losses")),
        optimizer=plain(values.get("optimizer")),
        schedule=plain(values.get("schedule")),
        clip_grad_norm=read.number("clip_grad_norm", None, low=0, low_open=True),
        normalize=parse_normalize(values.get("normalize", True)),
        pca_whitening=read.boolean("pca_whitening", False),
        augment={
            "crop_padding": aug.number("crop_padding", 0, low=0, integer=True),
            "hflip": aug.boolean("hflip", False),
            "random_resized_crop": _resized_crop(augment.get("random_resized_crop")),
        },
        balanced_sampling=read.boolean("balanced_sampling", False),
        samples_per_class=read.number("samples_per_class", None, low=0, integer=True),
        freeze=_freeze(values.get("freeze")),
        lr_multipliers=_lr_multipliers(values.get("lr_multipliers")),
        metric=_choice(values, "metric", METRICS, None),
        device=_device(values.get("device", "auto")),
        precision=_choice(values, "precision", PRECISIONS, "auto"),
        threads=read.number("threads", None, low=1, integer=True),
    )


def _resized_crop(value: Any) -> dict[str, list[float]] | None:
    """`training.augment.random_resized_crop`: true (torchvision's scale and ratio), false
    or null (off), or {scale: [low, high], ratio: [low, high]}."""
    if value is None or value is False:
        return None
    if value is True:
        return {key: list(v) for key, v in RESIZED_CROP.items()}
    key = "training.augment.random_resized_crop"
    if not isinstance(value, dict):
        raise ConfigError(
            key, "unknown value", expected="true, false or {scale, ratio}", found=describe(value)
        )
    for name in value:
        if name not in RESIZED_CROP:
            raise ConfigError(
                f"{key}.{name}",
                "unknown key",
                expected="scale or ratio",
                found=f"'{name}'",
                hint=did_you_mean(str(name), RESIZED_CROP),
            )
    read = Options(value, key)
    scale = read.numbers("scale", RESIZED_CROP["scale"], length=2, low=0, high=1, low_open=True)
    ratio = read.numbers("ratio", RESIZED_CROP["ratio"], length=2, low=0, low_open=True)
    for name, (low, high) in (("scale", scale), ("ratio", ratio)):
        if low > high:
            raise ConfigError(
                f"{key}.{name}", "low above high", expected="[low, high]", found=f"[{low}, {high}]"
            )
    return {"scale": scale, "ratio": ratio}


def _patterns(value: Any, key: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(
        isinstance(item, str) and item for item in items
    ):
        raise ConfigError(
            key,
            "must be layer-name patterns",
            expected="a pattern or a list of them, e.g. [conv1, bn1, 'layer*']",
            found=describe(value),
        )
    return list(items)


def _freeze(value: Any) -> dict[str, Any]:
    """`training.freeze`: patterns (frozen all run) or {layers: patterns, epochs: N}."""
    if value is None:
        return {"layers": [], "epochs": None}
    if not isinstance(value, dict):
        return {"layers": _patterns(value, "training.freeze"), "epochs": None}
    for key in value:
        if key not in ("layers", "epochs"):
            raise ConfigError(
                f"training.freeze.{key}",
                "unknown key",
                expected="layers and epochs",
                found=f"'{key}'",
                hint=did_you_mean(str(key), ("layers", "epochs")),
            )
    if "layers" not in value:
        raise ConfigError("training.freeze.layers", "missing", expected="layer-name patterns")
    epochs = Options(value, "training.freeze").number("epochs", None, low=1, integer=True)
    return {"layers": _patterns(value["layers"], "training.freeze.layers"), "epochs": epochs}


def _lr_multipliers(value: Any) -> dict[str, float]:
    """`training.lr_multipliers`: {pattern: factor of the lr} (Caffe's lr_mult)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(
            "training.lr_multipliers",
            "must be a mapping",
            expected="{layer pattern: factor}, e.g. {'layer*': 0.1}",
            found=describe(value),
        )
    read = Options(value, "training.lr_multipliers")
    return {str(pattern): read.number(pattern, 1.0, low=0) for pattern in value}


NAMED_NORMALIZATIONS = {  # torchvision's and timm's ImageNet statistics, of pixels in [0, 1]
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


def parse_normalize(value: Any) -> bool | dict[str, list[float]]:
    """`training.normalize`: true (fitted), false, a named set or {mean: [...], std: [...]}."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in NAMED_NORMALIZATIONS:
        return {key: list(v) for key, v in NAMED_NORMALIZATIONS[value].items()}
    expected = (
        "true (fitted on the training split), false, "
        + ", ".join(NAMED_NORMALIZATIONS)
        + " or {mean: [...], std: [...]}"
    )
    if not isinstance(value, dict):
        hint = did_you_mean(value, NAMED_NORMALIZATIONS) if isinstance(value, str) else None
        raise ConfigError(
            "training.normalize",
            "unknown value",
            expected=expected,
            found=describe(value),
            hint=hint,
        )
    for key in value:
        if key not in ("mean", "std"):
            raise ConfigError(
                f"training.normalize.{key}",
                "unknown key",
                expected="mean and std",
                found=f"'{key}'",
                hint=did_you_mean(str(key), ("mean", "std")),
            )
    given: dict[str, list[float]] = {}
    for key in ("mean", "std"):
        if key not in value:
            raise ConfigError(f"training.normalize.{key}", "missing", expected=expected)
        items = value[key] if isinstance(value[key], (list, tuple)) else [value[key]]
        if not items:
            raise ConfigError(
                f"training.normalize.{key}", "empty", expected="one value, or one per channel"
            )
        read = Options({key: list(items)}, "training.normalize")
        std = key == "std"  # a std of 0 would divide by zero
        given[key] = read.numbers(key, [], length=len(items), low=0 if std else None, low_open=std)
    if len(given["mean"]) != len(given["std"]) and 1 not in (len(given["mean"]), len(given["std"])):
        raise ConfigError(
            "training.normalize",
            f"mean has {len(given['mean'])} values and std {len(given['std'])}",
            expected="one value each, or one per channel",
        )
    return given


def _with_lr(optimizer: Any, lr: float) -> dict[str, Any]:
    if optimizer is None:
        return {"lr": lr}
    if isinstance(optimizer, str):
        return {"type": optimizer, "lr": lr}
    return {**plain(optimizer), "lr": lr}


def _input_size(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (value[0], value[1])
    raise ConfigError(
        "training.input_size",
        "must be a size",
        expected="an integer or [H, W]",
        found=describe(value),
    )


@overload
def _choice(values: dict, key: str, choices: tuple[str, ...], default: str) -> str: ...


@overload
def _choice(values: dict, key: str, choices: tuple[str, ...], default: None) -> str | None: ...


def _choice(values: dict, key: str, choices: tuple[str, ...], default: str | None) -> str | None:
    """One of `choices`; `default` when unset or null."""
    value = values.get(key)
    if value is None:
        return default
    if value not in choices:
        raise ConfigError(
            f"training.{key}",
            "unknown value",
            expected=" or ".join(choices),
            found=describe(value),
            hint=did_you_mean(str(value), choices),
        )
    return value


def _device(value: Any) -> str:
    if not isinstance(value, str) or not (
        value in ("auto", "cpu", "cuda") or value.startswith("cuda:")
    ):
        raise ConfigError(
            "training.device",
            "unknown device",
            expected="auto, cpu, cuda or cuda:N",
            found=describe(value),
        )
    return value

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


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    val_fraction: float = 0.15
    seed: int = 0
    input_size: tuple[int, int] | None = None
    loss: Any = None
    optimizer: Any = None
    schedule: Any = None
    clip_grad_norm: float | None = None
    # True: per-channel mean and std fitted on the training split; False: none; or given,
    # {"mean": [...], "std": [...]} (one value, or one per channel), as a pretrained net expects
    normalize: bool | dict[str, list[float]] = True
    pca_whitening: bool = False
    augment: dict[str, Any] = field(default_factory=lambda: {"crop_padding": 0, "hflip": False})
    balanced_sampling: bool = False
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
        if key not in ("crop_padding", "hflip"):
            raise ConfigError(
                f"training.augment.{key}",
                "unknown augmentation",
                expected="crop_padding or hflip",
                found=f"'{key}'",
                hint=did_you_mean(key, ("crop_padding", "hflip")),
            )
    return TrainConfig(
        epochs=read.number("epochs", 10, low=1, integer=True),
        batch_size=read.number("batch_size", 64, low=1, integer=True),
        val_fraction=read.number("val_fraction", 0.15, low=0, high=1, high_open=True),
        seed=read.number("seed", 0, low=0, high=2**31 - 1, integer=True),
        input_size=_input_size(values.get("input_size")),
        loss=plain(values.get("loss")),
        optimizer=plain(values.get("optimizer")),
        schedule=plain(values.get("schedule")),
        clip_grad_norm=read.number("clip_grad_norm", None, low=0, low_open=True),
        normalize=parse_normalize(values.get("normalize", True)),
        pca_whitening=read.boolean("pca_whitening", False),
        augment={
            "crop_padding": aug.number("crop_padding", 0, low=0, integer=True),
            "hflip": aug.boolean("hflip", False),
        },
        balanced_sampling=read.boolean("balanced_sampling", False),
        metric=_choice(values, "metric", METRICS, None),
        device=_device(values.get("device", "auto")),
        precision=_choice(values, "precision", PRECISIONS, "auto"),
        threads=read.number("threads", None, low=1, integer=True),
    )


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

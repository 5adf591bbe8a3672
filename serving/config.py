"""Per-model serving settings: `REPO/<model>/config.yaml` (every key optional).

```yaml
max_batch_size: 16            # largest batch the batcher builds; 0 turns batching off
dynamic_batching:             # or false
  max_queue_delay_us: auto    # how long a short batch may wait for company: auto (wait up
                              # to 1 ms, only while clients send concurrently), or microseconds
                              # (0: never wait; batches form from what queued while the model ran)
  preferred_batch_sizes: [8, 16]
  max_queue_size: 256         # beyond this (or 2 GiB of queued inputs), RESOURCE_EXHAUSTED
  refusals_per_second: 50     # a storm of refusals is paced: at most this many answered a
                              # second, the rest held until their turn (0: all at once)
instances: 1                  # requests run concurrently on this many threads
intra_op_threads: 0           # onnxruntime threads per run (0: its default)
labels: [cat, dog]            # when the model carries none (or labels_file: labels.txt)
version_policy: latest        # latest | all | [1, 3]
input_format: NCHW            # a picture input's layout, NCHW or NHWC, for a model without
                              # netc's card (Triton's image clients need it)
```

A model folder without config.yaml may hold Triton's `config.pbtxt` instead:
serving/triton_config.py reads it into the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netc.errors import SourceLoc, UserError, did_you_mean
from netc.yaml_loader import LocList, LocMap, load_located

KEYS = (
    "max_batch_size",
    "dynamic_batching",
    "instances",
    "intra_op_threads",
    "labels",
    "labels_file",
    "version_policy",
    "input_format",
)
INPUT_FORMATS = ("NCHW", "NHWC")
BATCHING_KEYS = (
    "max_queue_delay_us",
    "preferred_batch_sizes",
    "max_queue_size",
    "refusals_per_second",
)


@dataclass(frozen=True)
class ModelConfig:
    max_batch_size: int = 16
    dynamic_batching: bool = True
    max_queue_delay_us: int | None = None  # None: auto
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    refusals_per_second: int = 50  # serving.batching_policy.RefusalPace
    instances: int = 1
    intra_op_threads: int = 0
    labels: tuple[str, ...] | None = None
    version_policy: Any = "latest"  # "latest", "all" or a tuple of ints
    input_format: str | None = None  # NCHW | NHWC; None: the model card's layout, if any
    source: str = field(default="defaults", compare=False)


DEFAULTS = ModelConfig()  # what a setting left out (or a folder without config.yaml) gets
MAX_DELAY_US = 60_000_000  # a minute: beyond it a "delay" is a mistake


def _positive(value: Any) -> bool:
    """A positive integer; YAML's true/false are not numbers here."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int(data: LocMap, key: str, low: int) -> int:
    value = data.get(key, getattr(DEFAULTS, key))
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(
            f"'{key}' must be an integer >= {low}, found {value!r}", loc=data.value_loc(key)
        )
    return value


def _delay(batching: LocMap) -> int | None:
    """`max_queue_delay_us`: None for auto (serving.batcher), else microseconds."""
    if "max_queue_delay_us" not in batching:
        return DEFAULTS.max_queue_delay_us
    value = batching["max_queue_delay_us"]
    if value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DELAY_US:
        raise UserError(
            f"'max_queue_delay_us' must be auto or an integer from 0 to {MAX_DELAY_US:,} "
            f"(microseconds), found {value!r}",
            loc=batching.value_loc("max_queue_delay_us"),
        )
    return value


def _policy(data: LocMap) -> Any:
    value = data.get("version_policy", DEFAULTS.version_policy)
    if value in ("latest", "all"):
        return value
    if isinstance(value, list) and value and all(_positive(v) for v in value):
        return tuple(value)
    raise UserError(
        f"version_policy must be 'latest', 'all' or a list of versions, found {value!r}",
        loc=data.value_loc("version_policy"),
    )


def _labels(data: LocMap, folder: Path) -> tuple[str, ...] | None:
    if "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, LocList) or not all(isinstance(x, (str, int)) for x in labels):
            raise UserError("labels must be a list of names", loc=data.value_loc("labels"))
        flags = [i for i, x in enumerate(labels) if isinstance(x, bool)]
        if flags:
            raise UserError(
                f"label {flags[0]} reads as {labels[flags[0]]} in YAML "
                "(yes/no/on/off are booleans); quote it, as in 'no'",
                loc=labels.item_loc(flags[0]),
            )
        return tuple(str(x) for x in labels)
    if "labels_file" in data:
        path = folder / str(data["labels_file"])
        try:
            return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        except OSError as exc:
            raise UserError(
                f"cannot read labels_file {path}: {exc}", loc=data.value_loc("labels_file")
            ) from None
    return DEFAULTS.labels


def _batching(data: LocMap) -> tuple[bool, LocMap]:
    """Whether dynamic batching is on, and its settings (none given: an empty mapping)."""
    if "dynamic_batching" not in data:
        return DEFAULTS.dynamic_batching, LocMap()
    batching = data["dynamic_batching"]
    if batching is False:
        return False, LocMap()
    if not isinstance(batching, LocMap):
        raise UserError(
            "dynamic_batching must be a mapping or false", loc=data.value_loc("dynamic_batching")
        )
    for key in batching:
        if key not in BATCHING_KEYS:
            raise UserError(f"unknown dynamic_batching setting '{key}'", loc=batching.key_loc(key))
    return True, batching


def _preferred(batching: LocMap) -> tuple[int, ...]:
    if "preferred_batch_sizes" not in batching:
        return DEFAULTS.preferred_batch_sizes
    sizes = batching["preferred_batch_sizes"]
    if not isinstance(sizes, list) or not all(_positive(v) for v in sizes):
        raise UserError(
            "preferred_batch_sizes must be positive integers",
            loc=batching.value_loc("preferred_batch_sizes"),
        )
    return tuple(sorted(sizes))


def _input_format(data: LocMap) -> str | None:
    value = data.get("input_format", DEFAULTS.input_format)
    if value is not None and value not in INPUT_FORMATS:
        raise UserError(
            f"input_format must be NCHW or NHWC, found {value!r}",
            loc=data.value_loc("input_format"),
        )
    return value


def load_config(folder: Path) -> ModelConfig:
    """The model's settings from `folder/config.yaml`, else from Triton's `config.pbtxt`,
    else the defaults. A mistake names the file, line and column of the setting, as the
    compiler's do."""
    path = folder / "config.yaml"
    if not path.exists():
        if (folder / "config.pbtxt").exists():
            from netc.serving.triton_config import read_config  # it builds on this module

            return read_config(folder / "config.pbtxt")
        return DEFAULTS
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot read: {exc}") from None
    # The located loader: YAML mistakes name their line and column, duplicate keys are
    # refused, and aliases cannot expand without bound.
    data = load_located(text, where, allow_empty=True)
    if data is None:  # empty, only comments, or `~`: every setting at its default
        return DEFAULTS
    if not isinstance(data, LocMap):
        at = getattr(data, "loc", None) or SourceLoc(where, 1, 1)
        raise UserError("expected a mapping of settings", loc=at)
    for key in data:
        if key not in KEYS:
            hint = did_you_mean(str(key), KEYS)
            raise UserError(
                f"unknown setting '{key}'" + (f"\n  hint: {hint}" if hint else ""),
                loc=data.key_loc(key),
            )
    enabled, batching = _batching(data)
    return ModelConfig(
        max_batch_size=_int(data, "max_batch_size", 0),
        dynamic_batching=enabled,
        max_queue_delay_us=_delay(batching),
        preferred_batch_sizes=_preferred(batching),
        max_queue_size=_int(batching, "max_queue_size", 1),
        refusals_per_second=_int(batching, "refusals_per_second", 0),
        instances=_int(data, "instances", 1),
        intra_op_threads=_int(data, "intra_op_threads", 0),
        labels=_labels(data, folder),
        version_policy=_policy(data),
        input_format=_input_format(data),
        source=where,
    )

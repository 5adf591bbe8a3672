"""Per-model serving settings: `REPO/<model>/config.yaml` (every key optional).

```yaml
max_batch_size: 16            # largest batch the batcher builds; 0 turns batching off
dynamic_batching:             # or false
  max_queue_delay_us: auto    # how long a short batch may wait for company: auto (wait up
                              # to 1 ms, only while clients send concurrently), or microseconds
                              # (0: never wait; batches form from what queued while the model ran)
  preferred_batch_sizes: [8, 16]
  max_queue_size: 256         # beyond this (or 2 GiB of queued inputs), RESOURCE_EXHAUSTED at once
instances: 1                  # requests run concurrently on this many threads
intra_op_threads: 0           # onnxruntime threads per run (0: its default)
labels: [cat, dog]            # when the model carries none (or labels_file: labels.txt)
version_policy: latest        # latest | all | [1, 3]
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netc.errors import UserError, did_you_mean
from netc.yaml_loader import LocMap, load_located

KEYS = (
    "max_batch_size",
    "dynamic_batching",
    "instances",
    "intra_op_threads",
    "labels",
    "labels_file",
    "version_policy",
)
BATCHING_KEYS = ("max_queue_delay_us", "preferred_batch_sizes", "max_queue_size")


@dataclass(frozen=True)
class ModelConfig:
    max_batch_size: int = 16
    dynamic_batching: bool = True
    max_queue_delay_us: int | None = None  # None: auto
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 256
    instances: int = 1
    intra_op_threads: int = 0
    labels: tuple[str, ...] | None = None
    version_policy: Any = "latest"  # "latest", "all" or a tuple of ints
    source: str = field(default="defaults", compare=False)


MAX_DELAY_US = 60_000_000  # a minute: beyond it a "delay" is a mistake


def _positive(value: Any) -> bool:
    """A positive integer; YAML's true/false are not numbers here."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _int(data: dict, key: str, default: int, low: int, where: str) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"error: {where}: '{key}' must be an integer >= {low}, found {value!r}")
    return value


def _delay(batching: dict, where: str) -> int | None:
    """`max_queue_delay_us`: None for auto (serving.batcher), else microseconds."""
    value = batching.get("max_queue_delay_us", "auto")
    if value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_DELAY_US:
        raise UserError(
            f"error: {where}: 'max_queue_delay_us' must be auto or an integer from 0 to "
            f"{MAX_DELAY_US:,} (microseconds), found {value!r}"
        )
    return value


def _at(mapping: dict, key: Any, where: str) -> str:
    """file:line:column of a key, so a misspelt setting is found at once (the located
    loader's mappings know it; `where`, the file, otherwise)."""
    return str(mapping.key_loc(key)) if isinstance(mapping, LocMap) else where


def _policy(value: Any, where: str) -> Any:
    if value in ("latest", "all"):
        return value
    if isinstance(value, list) and value and all(_positive(v) for v in value):
        return tuple(value)
    raise UserError(
        f"error: {where}: version_policy must be 'latest', 'all' or a list of "
        f"versions, found {value!r}"
    )


def _labels(data: dict, folder: Path, where: str) -> tuple[str, ...] | None:
    if "labels" in data:
        labels = data["labels"]
        if not isinstance(labels, list) or not all(isinstance(x, (str, int)) for x in labels):
            raise UserError(f"error: {where}: labels must be a list of names")
        flags = [i for i, x in enumerate(labels) if isinstance(x, bool)]
        if flags:
            raise UserError(
                f"error: {where}: label {flags[0]} reads as {labels[flags[0]]} in YAML "
                "(yes/no/on/off are booleans); quote it, as in 'no'"
            )
        return tuple(str(x) for x in labels)
    if "labels_file" in data:
        path = folder / str(data["labels_file"])
        try:
            return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        except OSError as exc:
            raise UserError(f"error: {where}: cannot read labels_file {path}: {exc}") from None
    return None


def load_config(folder: Path) -> ModelConfig:
    """The model's settings from `folder/config.yaml`, or the defaults."""
    path = folder / "config.yaml"
    if not path.exists():
        return ModelConfig()
    where = str(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"error: {where}: cannot read: {exc}") from None
    # The located loader: YAML mistakes name their line and column, duplicate keys are
    # refused, and aliases cannot expand without bound.
    data = load_located(text, where, allow_empty=True)
    if data is None:  # empty, only comments, or `~`: every setting at its default
        return ModelConfig()
    if not isinstance(data, dict):
        raise UserError(f"error: {where}: expected a mapping of settings")
    for key in data:
        if key not in KEYS:
            hint = did_you_mean(str(key), KEYS)
            raise UserError(
                f"error: {_at(data, key, where)}: unknown setting '{key}'"
                + (f"\n  hint: {hint}" if hint else "")
            )
    batching = data.get("dynamic_batching", {})
    if batching is False:
        batching, enabled = {}, False
    elif isinstance(batching, dict):
        enabled = True
    else:
        raise UserError(f"error: {where}: dynamic_batching must be a mapping or false")
    for key in batching:
        if key not in BATCHING_KEYS:
            raise UserError(
                f"error: {_at(batching, key, where)}: unknown dynamic_batching setting '{key}'"
            )
    preferred = batching.get("preferred_batch_sizes", [])
    if not isinstance(preferred, list) or not all(_positive(v) for v in preferred):
        raise UserError(f"error: {where}: preferred_batch_sizes must be positive integers")
    return ModelConfig(
        max_batch_size=_int(data, "max_batch_size", 16, 0, where),
        dynamic_batching=enabled,
        max_queue_delay_us=_delay(batching, where),
        preferred_batch_sizes=tuple(sorted(preferred)),
        max_queue_size=_int(batching, "max_queue_size", 256, 1, where),
        instances=_int(data, "instances", 1, 1, where),
        intra_op_threads=_int(data, "intra_op_threads", 0, 0, where),
        labels=_labels(data, folder, where),
        version_policy=_policy(data.get("version_policy", "latest"), where),
        source=where,
    )

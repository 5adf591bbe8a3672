"""Steps 1-2 of a run: the network, its settings and the data, all checked.

Nothing is written here: a mistake found while preparing leaves no RUN_DIR.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from netc.compiler import symbolic as sym
from netc.compiler.network import Network, load, load_string
from netc.console import say
from netc.errors import ConfigError, DataError
from netc.runtime.config import TrainConfig, parse_training
from netc.runtime.datasets import ArrayDataset, load_dataset, resize, split
from netc.runtime.preprocess import Preprocessing, fit_preprocessing


@dataclass
class PreparedRun:
    network: Network
    config: TrainConfig
    train_set: ArrayDataset
    val_set: ArrayDataset
    preprocessing: Preprocessing
    classes: list[str]
    params: dict[str, Any]


def _compile(source: str, params: dict[str, Any], stored: dict[str, Any] | None) -> Network:
    if stored is not None:
        return load_string(
            stored["description"], file=stored["description_file"], params=stored["params"]
        )
    return load(source, params=params)


def _network_classes(network: Network) -> int:
    shape = next(iter(network.analysis.outputs.values())).shape
    return sym.static(shape[1])


def _binary(config: TrainConfig) -> bool:
    """Whether the first output trains with binary_cross_entropy: one logit for two classes."""
    losses = config.losses if isinstance(config.losses, dict) else {}
    first = next(iter(losses.values()), None)
    loss = first.get("loss", config.loss) if isinstance(first, dict) else config.loss
    kind = loss.get("type") if isinstance(loss, dict) else loss
    return kind == "binary_cross_entropy"


def _fit_to_data(
    network: Network,
    source: str,
    params: dict[str, Any],
    data: ArrayDataset,
    quiet: bool,
    binary: bool = False,
) -> tuple[Network, dict[str, Any]]:
    """Match the head to the data: set the network's num_classes when it has one (one
    logit stands for two classes under binary_cross_entropy)."""
    classes = len(data.classes)
    if network.graph.task == "embedding" or _network_classes(network) == classes:
        return network, params
    if binary and classes == 2 and _network_classes(network) == 1:
        return network, params
    if "num_classes" in network.spec.params and "num_classes" not in params:
        say(f"note: num_classes set to {classes} to match the data ({data.source})", quiet)
        params = {**params, "num_classes": classes}
        return load_string(network.graph.source, file=network.graph.file, params=params), params
    raise DataError(
        f"the network's output has {_network_classes(network)} classes but the data "
        f"set {data.source} has {classes}\n  hint: set the head's size, e.g. "
        f"--set num_classes={classes}"
    )


def _check_classes(network: Network, data: ArrayDataset) -> None:
    """Before the head is fitted to the data: one class leaves nothing to learn."""
    task = network.graph.task
    if task != "embedding" and len(data.classes) < 2:
        found = f"only the class '{data.classes[0]}'" if data.classes else "no classes"
        raise DataError(
            f"{data.source} has {found}; a {task} network needs at least two to tell apart"
        )


def _check_data(network: Network, data: ArrayDataset, config: TrainConfig) -> ArrayDataset:
    graph = network.graph
    task = graph.task
    if task != "embedding" and data.task != task:
        raise DataError(
            f"{graph.name} is a {task} network but {data.source} is a {data.task} data set"
        )
    shape = next(iter(graph.inputs.values())).shape
    channels = data.images.shape[1]
    if shape[1] != channels:
        raise DataError(
            f"{graph.name} takes {shape[1]}-channel input but {data.source} "
            f"has {channels}-channel images"
        )
    size = config.input_size
    fixed = all(isinstance(d, int) for d in shape[2:])
    if size is not None and fixed and tuple(size) != tuple(shape[2:]):
        raise ConfigError(
            "training.input_size",
            f"{list(size)} differs from {graph.name}'s fixed input size "
            f"{list(shape[2:])}\n  hint: drop input_size (images are resized to the "
            "network's size)",
        )
    if size is None and fixed:
        size = (sym.static(shape[2]), sym.static(shape[3]))
    if size is not None:
        data = resize(data, size)
    return data


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def prepare(
    source: str,
    data_spec: str,
    *,
    overrides: dict[str, Any],
    params: dict[str, Any],
    stored: dict[str, Any] | None,
    quiet: bool,
) -> PreparedRun:
    """Steps 1-2: the network, its settings and the data, all checked."""
    network = _compile(source, params, stored)
    config = parse_training(network.spec.training, overrides)
    if stored is not None:
        config = parse_training(stored["config"], overrides)
        for key in ("seed", "val_fraction", "input_size"):
            was, now = _listed(stored["config"].get(key)), _listed(getattr(config, key))
            if now != was:
                # a new split would put validation samples the model trained on in sight
                raise ConfigError(
                    f"training.{key}",
                    f"--resume keeps the run's {key} ({was}); found {now}\n"
                    "  hint: drop the flag, or start a new run with another --out",
                )
    data = load_dataset(data_spec)
    _check_classes(network, data)
    if stored is None:
        network, params = _fit_to_data(network, source, params, data, quiet, _binary(config))
    else:
        params = stored["params"]
    data = _check_data(network, data, config)
    train_set, val_set = split(data, config.val_fraction, config.seed)
    if len(train_set) < config.batch_size:
        raise DataError(
            f"batch size {config.batch_size} is larger than the training "
            f"split ({len(train_set)} samples of {data.source})\n"
            f"  hint: --batch-size {max(1, len(train_set) // 4)}"
        )
    preprocessing = fit_preprocessing(
        train_set.images,
        normalize=config.normalize,
        pca_whitening=config.pca_whitening,
        input_size=train_set.image_shape[1:],
    )
    # The network trains on what export and serving will feed it: preprocessed images.
    train_set = replace(train_set, images=preprocessing.apply(train_set.images))
    if len(val_set):
        val_set = replace(val_set, images=preprocessing.apply(val_set.images))
    classes = list(data.classes)
    return PreparedRun(network, config, train_set, val_set, preprocessing, classes, params)

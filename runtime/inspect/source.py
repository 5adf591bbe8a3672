"""What `netc inspect` looks at: a trained run and the pictures it is shown.

A run directory (or checkpoint) gives the graph and its analysis (receptive
fields), a PyTorch module holding the trained weights, the preprocessing,
labels and training history. Pictures come from PNG/JPEG files or a data set;
each is kept twice: as the user sees it (in [0, 1], at the network's input
size) and as the network takes it (preprocessed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from netc.compiler import symbolic as sym
from netc.compiler.analysis import Analysis
from netc.compiler.ir import Graph
from netc.compiler.network import load_string
from netc.errors import UserError
from netc.runtime import checkpoint
from netc.runtime.metrics import upgrade_row
from netc.runtime.module import build_module
from netc.runtime.preprocess import Preprocessing


@dataclass
class Model:
    """A trained network ready to be looked at (module in eval mode, no in-place ops)."""

    path: Path
    graph: Graph
    analysis: Analysis
    module: fx.GraphModule
    preprocessing: Preprocessing | None
    labels: list[str] | None
    history: list[dict[str, Any]]
    config: dict[str, Any]

    @property
    def task(self) -> str:
        return self.graph.task

    @property
    def channels(self) -> int:
        return sym.static(next(iter(self.graph.inputs.values())).shape[1])

    @property
    def input_size(self) -> tuple[int, int] | None:
        """The (H, W) the network sees: fixed by the graph, else the training size."""
        shape = next(iter(self.graph.inputs.values())).shape
        if all(isinstance(d, int) for d in shape[2:]):
            return (sym.static(shape[2]), sym.static(shape[3]))
        if self.preprocessing is not None and self.preprocessing.input_size:
            return self.preprocessing.input_size
        return None


def from_graph(graph: Graph, module: fx.GraphModule, **extra: Any) -> Model:
    """A Model around a graph and module built in memory (tests, the Python API)."""
    from netc.compiler.analysis import analyze

    _no_inplace(module)
    module.eval()
    return Model(
        path=Path(extra.get("path", graph.name)),
        graph=graph,
        analysis=analyze(graph),
        module=module,
        preprocessing=extra.get("preprocessing"),
        labels=extra.get("labels"),
        history=extra.get("history", []),
        config=extra.get("config", {}),
    )


def load_run(path: str | Path) -> Model:
    """A run directory's best (else last) checkpoint, or a .pt file, as a Model."""
    path = Path(path)
    state = checkpoint.load(path)
    net = load_string(
        state["description"], file=state.get("description_file", "<run>"), params=state["params"]
    )
    module = build_module(net.graph)
    weights = {k: torch.as_tensor(v) for k, v in state["model"].items()}
    try:
        module.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(
            f"{path}: the weights do not fit the network stored with them ({first})"
        ) from None
    pre = state.get("preprocessing")
    model = from_graph(
        net.graph,
        module,
        path=path,
        preprocessing=Preprocessing.from_dict(pre) if isinstance(pre, dict) else None,
        labels=state.get("labels"),
        history=_history(path, state),
        config=state.get("config") or {},
    )
    return model


def _no_inplace(module: nn.Module) -> None:
    """In-place activations would overwrite the outputs that inspection records."""
    for child in module.modules():
        if getattr(child, "inplace", False):
            # torch types Module's attributes as tensors and modules; this one is a flag
            child.inplace = False  # type: ignore[assignment]


def _history(path: Path, state: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.jsonl beside the checkpoint (what a user reads), else the checkpoint's copy."""
    folder = path if path.is_dir() else path.parent
    metrics = folder / "metrics.jsonl"
    if metrics.is_file():
        rows = []
        for number, line in enumerate(metrics.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{metrics}:{number}: not a JSON line ({exc.msg})") from None
            if isinstance(row, dict):
                rows.append(upgrade_row(row))
        return rows
    history = state.get("history")
    return [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []


# ---------------------------------------------------------------------------- pictures


@dataclass
class Batch:
    """Pictures as seen ((N, C, H, W) in [0, 1]) and as the network takes them."""

    shown: torch.Tensor
    inputs: torch.Tensor
    names: list[str]
    targets: torch.Tensor | None = None


def read_picture(path: str | Path, channels: int) -> torch.Tensor:
    """A PNG/JPEG file → (C, H, W) float in [0, 1] with the network's channel count."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as picture:
            picture.load()
            converted = picture.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise UserError(f"--image {path}: no such file") from None
    except OSError as exc:
        raise UserError(f"--image {path}: not a readable PNG or JPEG ({exc})") from None
    array = np.asarray(converted, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    if channels not in (1, 3):
        raise UserError(
            f"--image {path}: the network takes {channels}-channel input; "
            "inspect reads grey (1) or RGB (3) pictures"
        )
    return torch.from_numpy(np.ascontiguousarray(array))


def prepare(model: Model, pictures: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) pictures in [0, 1] → the same at the network's input size."""
    size = model.input_size
    if size is not None and tuple(pictures.shape[2:]) != tuple(size):
        pictures = F.interpolate(pictures, size=size, mode="bilinear", align_corners=False)
    return pictures.clamp(0.0, 1.0)


def batch(model: Model, pictures: torch.Tensor, names: list[str], targets=None) -> Batch:
    shown = prepare(model, pictures)
    inputs = model.preprocessing.apply(shown) if model.preprocessing is not None else shown
    return Batch(shown, inputs, names, targets)


def pictures_from_files(model: Model, paths: list[Path]) -> Batch:
    """Files of any size: each is brought to the network's size (the first file's size
    for an open-size network trained without one)."""
    loaded = [read_picture(p, model.channels) for p in paths]
    size = model.input_size or tuple(loaded[0].shape[1:])
    shown = [
        F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
        if tuple(x.shape[1:]) != tuple(size)
        else x
        for x in loaded
    ]
    return batch(model, torch.stack(shown), [p.name for p in paths])


def pictures_from_data(model: Model, data: str, limit: int) -> Batch:
    """Up to `limit` pictures of a data set: the run's validation split when it fits the
    run's split (same seed and fraction), else the data set's first pictures."""
    from netc.runtime.datasets import load_dataset, split

    dataset = load_dataset(data)
    if dataset.images.shape[1] != model.channels:
        raise UserError(
            f"--data {data}: {dataset.images.shape[1]}-channel images, but "
            f"{model.graph.name} takes {model.channels} channels"
        )
    fraction, seed = model.config.get("val_fraction"), model.config.get("seed", 0)
    if isinstance(fraction, float) and 0 < fraction < 1:
        _, held_out = split(dataset, fraction, seed)
        if len(held_out):
            dataset = held_out
    count = min(limit, len(dataset))
    names = [f"{Path(dataset.source).name} #{i}" for i in range(count)]
    return batch(model, dataset.images[:count], names, dataset.targets[:count])

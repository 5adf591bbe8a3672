"""Small networks with weights set by hand, as inspect Models (`from nets import ...`)."""

from __future__ import annotations

import torch

from netc.compiler.network import load_string
from netc.runtime.inspect.source import Batch, from_graph
from netc.runtime.module import build_module


def build(text: str, seed: int = 0, **extra):
    net = load_string(text)
    module = build_module(net.graph, seed=seed)
    return from_graph(net.graph, module, **extra)


def raw_batch(images: torch.Tensor) -> Batch:
    """Pictures the network takes as they are (no preprocessing)."""
    return Batch(images, images, [f"#{i}" for i in range(len(images))])


def lenet5():
    from netc.compiler import zoo

    return build(zoo.read("lenet5"), labels=[str(d) for d in range(10)])


def make_run(folder, history=None):
    """A run folder as netc train leaves it (best.pt, metrics.jsonl), with lenet5's
    seeded initial weights: what inspect reads, without training."""
    import json

    from netc.compiler import zoo
    from netc.runtime import checkpoint

    text = zoo.read("lenet5")
    module = build_module(load_string(text).graph, seed=0)
    history = history or [
        {
            "epoch": e,
            "loss": 2.0 / e,
            "train_accuracy": 0.5 + 0.1 * e,
            "val_loss": 2.2 / e,
            "val_accuracy": 0.45 + 0.1 * e,
            "lr": 0.01,
            "seconds": 1.0 * e,
        }
        for e in (1, 2, 3)
    ]
    state = {
        "model": module.state_dict(),
        "description": text,
        "description_file": "zoo:lenet5",
        "params": {},
        "labels": [str(d) for d in range(10)],
        "preprocessing": {"mean": [0.3], "std": [0.4], "input_size": [32, 32]},
        "config": {"val_fraction": 0.15, "seed": 0},
        "history": history,
    }
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.save(folder / "best.pt", state)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return folder


def write_picture(path, size=(8, 8), seed=0):
    """A grey PNG of a bright bar on black (digits are 8x8)."""
    import numpy as np
    from PIL import Image

    array = np.zeros(size, dtype=np.uint8)
    array[1:-1, size[1] // 2 - 1 : size[1] // 2 + 1] = 255
    Image.fromarray(array).save(path)
    return path

"""Accuracy against time: `netc train` with the zoo's default settings vs a
hand-written PyTorch loop, in one process.

1. lenet5 on digits: netc's run (zoo settings) vs a hand-written LeNet-5 with
   the same data split, preprocessing, augmentation and optimizer. Reports
   the best validation accuracy (`val_accuracy`) and the seconds until it first reached 99%
   (the baseline uses torch's AdamW, OneCycleLR and cross_entropy directly).
2. tinyseg on shapes: netc's run; reports the best validation mean IoU
   (`val_mean_iou`) and when it first reached 0.90.

    .venv/bin/python bench/train.py [--skip-seg]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import netc
from netc.runtime.datasets import load_dataset, resize, split
from netc.runtime.preprocess import Augment, fit_preprocessing
from netc.runtime.train import train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "reference"))
import torch_zoo


def first_time_reaching(history: list[dict], metric: str, target: float) -> float | None:
    for row in history:
        if row.get(metric, 0) >= target:
            return row["seconds"]
    return None


def hand_written_lenet(epochs: int, seed: int = 0) -> tuple[float, float | None, float]:
    """The same recipe written directly in PyTorch (the baseline)."""
    start = time.perf_counter()
    config = netc.load("lenet5").spec.training
    torch.manual_seed(seed)
    data = resize(load_dataset("digits"), (32, 32))
    train_set, val_set = split(data, config["val_fraction"], seed)
    pre = fit_preprocessing(train_set.images, normalize=True, pca_whitening=False)
    x_train, x_val = pre.apply(train_set.images), pre.apply(val_set.images)
    model = torch_zoo.build("lenet5")
    opt = config["optimizer"]
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=opt["lr"], weight_decay=opt["weight_decay"]
    )
    batch = config["batch_size"]
    steps = epochs * (len(x_train) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=opt["lr"],
        total_steps=steps,
        pct_start=1 / epochs,
        anneal_strategy="cos",
        div_factor=1e4,
        final_div_factor=1e4,
    )
    smoothing = config["loss"]["label_smoothing"]
    augment = Augment(config["augment"]["crop_padding"], False)
    generator = torch.Generator().manual_seed(seed)
    best, reached = 0.0, None
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for index in order[: len(order) - len(order) % batch].split(batch):
            x, y = augment(x_train[index], train_set.targets[index], generator)
            loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == val_set.targets).float().mean().item()
        best = max(best, accuracy)
        if reached is None and accuracy >= 0.99:
            reached = time.perf_counter() - start
    return best, reached, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-seg", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        result = train("lenet5", "digits", Path(tmp) / "lenet5", quiet=True)
        rows.append(
            (
                "lenet5 / digits",
                "netc train",
                "val_accuracy",
                result.best_metric,
                first_time_reaching(result.history, "val_accuracy", 0.99),
                result.seconds,
            )
        )
        epochs = netc.load("lenet5").spec.training["epochs"]
        best, reached, seconds = hand_written_lenet(epochs)
        rows.append(("lenet5 / digits", "hand-written", "val_accuracy", best, reached, seconds))
        if not args.skip_seg:
            result = train("tinyseg", "shapes", Path(tmp) / "tinyseg", quiet=True)
            rows.append(
                (
                    "tinyseg / shapes",
                    "netc train",
                    "val_mean_iou",
                    result.best_metric,
                    first_time_reaching(result.history, "val_mean_iou", 0.90),
                    result.seconds,
                )
            )
    print(
        f"{'task':<17} {'run':<13} {'metric':<12} {'best':>7} {'reached target':>15} {'total':>8}"
    )
    for task, run, metric, best, reached, seconds in rows:
        when = f"{reached:.1f}s" if reached is not None else "never"
        print(f"{task:<17} {run:<13} {metric:<12} {best:>7.4f} {when:>15} {seconds:>7.1f}s")
    print("targets: val_accuracy >= 0.99 within 60 s; val_mean_iou >= 0.90")


if __name__ == "__main__":
    main()

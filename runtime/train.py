"""`netc train`: a description and a data set in, checkpoints and metrics out.

The run, step by step (`train` reads as this list):
1. compile the description (or the one stored in the run, on --resume) and
   read its training settings, command-line flags overriding them;
2. load and check the data against the network (channels, classes, sizes),
   split it deterministically, fit preprocessing on the training split;
3. build the module (seeded), optionally load weights by layer name;
4. only then create RUN_DIR, so a mistake found above leaves nothing behind;
5. per epoch: shuffle and augment from generators seeded by (seed, epoch),
   which is what makes a resumed run repeat an uninterrupted one exactly;
   train, validate, log, and write `last.pt` (and `best.pt`) atomically.

Steps 1-2 live in `netc.runtime.prepare`, steps 3-5 in `netc.runtime.session`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from netc.errors import UserError
from netc.runtime import checkpoint
from netc.runtime.prepare import prepare
from netc.runtime.session import Session, TrainingDiverged, evaluate

__all__ = ["RunResult", "TrainingDiverged", "evaluate", "prepare", "train"]


@dataclass
class RunResult:
    run_dir: Path
    metric: str
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def train(
    source: str,
    data: str,
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    resume: bool = False,
    init_from: str | None = None,
    weights_layout: str | None = None,
    quiet: bool = False,
) -> RunResult:
    """Train a network description on a data set; see the module docstring for the steps."""
    started = time.perf_counter()
    run_dir = Path(out)
    stored = checkpoint.load(run_dir / "last.pt") if resume else None
    if stored is None and (run_dir / "last.pt").exists():
        raise UserError(
            f"{run_dir} already holds a run\n"
            "  hint: add --resume to continue it, or choose another --out"
        )
    overrides = overrides or {}
    run = prepare(
        source, data, overrides=overrides, params=params or {}, stored=stored, quiet=quiet
    )
    threads = torch.get_num_threads()  # the session picks its own; the caller gets theirs back
    try:
        session = Session.start(
            run, run_dir, stored, init_from, overrides.get("lr"), quiet, weights_layout
        )
        try:
            for epoch in range(session.first_epoch, run.config.epochs + 1):
                row = session.train_epoch(epoch)
                row.update(
                    evaluate(session.module, run, session.loss_fn, session.device, session.autocast)
                )
                session.end_epoch(row, started)
        finally:
            session.close()
    finally:
        torch.set_num_threads(threads)
    last = session.history[-1] if session.history else {}
    return RunResult(
        run_dir,
        session.compared_metric(last) if last else session.metric,
        session.best,
        session.best_epoch,
        max(0, run.config.epochs - session.first_epoch + 1),
        time.perf_counter() - started,
        session.history,
    )

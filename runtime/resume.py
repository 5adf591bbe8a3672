"""What `--resume` changes about a run's plan, and the note that says so.

A resumed run keeps its split, weights, optimizer and schedule state; flags may
change its length (`--epochs`) and its batches (`--batch-size`). Steps already
taken keep their rates. A cosine schedule then re-plans its rest (see
`CosineSchedule`): it goes on from its rate now to min_lr at the new end, or,
having reached min_lr already, starts a new cosine from the base lr. A step
schedule keeps its step size; none and plateau do not depend on the length.
"""

from __future__ import annotations

import math
from typing import Any

from netc.runtime.config import TrainConfig
from netc.runtime.optim import Schedule


def schedule_state(stored: dict[str, Any], train_count: int) -> dict[str, Any]:
    """The checkpoint's schedule state, with the plan its run was made with filled in when
    the checkpoint predates saving it (a cosine's end, a step schedule's step size)."""
    state = dict(stored["scheduler"])
    was = stored["config"]
    if state.get("type") == "cosine" and "end_step" not in state:
        state["end_step"] = was["epochs"] * (train_count // was["batch_size"])
    if state.get("type") == "step" and "step_size" not in state:
        setting = was.get("schedule")
        given = setting.get("step_size") if isinstance(setting, dict) else None
        state["step_size"] = given or max(1, math.ceil(was["epochs"] / 3))
    return state


def replan(
    schedule: Schedule, stored: dict[str, Any], config: TrainConfig, train_count: int
) -> str:
    """Re-plan the schedule when the run's length or batches changed; returns the note
    that says what the rest of the run does, or ""."""
    was = stored["config"]
    done = stored["epoch"]
    if (config.epochs, config.batch_size) == (was["epochs"], was["batch_size"]):
        return ""
    end = schedule.steps + (config.epochs - done) * (train_count // config.batch_size)
    change = schedule.replan(end)
    if not change:
        return ""
    epochs = _epochs(done + 1, config.epochs)
    min_lr = getattr(schedule, "min_lr", 0.0)
    if change == "restarts":
        return (
            f"note: the cosine schedule had reached min_lr {min_lr:g} after epoch {done}; "
            f"{epochs}: a new cosine from the base lr {schedule.lr():.3g} down to "
            f"{min_lr:g} (a warm restart)"
        )
    if config.epochs != was["epochs"]:
        what = f"{config.epochs} epochs (planned: {was['epochs']})"
    else:
        what = f"batches of {config.batch_size} (were {was['batch_size']})"
    return (
        f"note: the cosine schedule is re-planned for {what}: the lr goes on from "
        f"{schedule.lr():.3g} along the rest of the cosine, stretched over {epochs}, "
        f"to min_lr {min_lr:g}"
    )


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def resume_note(run_dir: Any, done: int, epochs: int) -> str:
    """The line that opens a resumed run."""
    if done >= epochs:
        return (
            f"note: {run_dir} has trained {done} epochs (the run asks for {epochs}); nothing "
            f"left to do (--epochs N with N > {done} trains more)"
        )
    return f"note: resuming {run_dir} after epoch {done}: {_epochs(done + 1, epochs)}"

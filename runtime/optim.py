"""Optimizers, learning-rate schedules and gradient clipping for training.

    optimizer = build_optimizer(module, config.optimizer)
    schedule = build_scheduler(optimizer, config.schedule, epochs=E, steps_per_epoch=S)
    for epoch in range(E):
        for batch in loader:
            loss.backward()
            norm = clip_gradients(module, config.clip_grad_norm)  # measured even unclipped
            if math.isfinite(norm):  # never let inf/NaN into the weights
                optimizer.step(); schedule.after_batch()
        schedule.after_epoch(validation_loss)

Settings are `name` or `{type: name, option: value}`; a bad one is a ConfigError
on its dotted key ('training.optimizer.lr').
"""

from __future__ import annotations

import math
from typing import Any

import torch

from netc.errors import ConfigError, InternalError, UserError
from netc.runtime.layer_patterns import multiplier_for
from netc.runtime.options import Options, parse_typed

_COMMON = ("lr", "weight_decay", "decay_norm_and_bias")
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "sgd": (*_COMMON, "momentum", "nesterov"),
    "rmsprop": (*_COMMON, "alpha", "momentum", "eps"),
    "adam": (*_COMMON, "betas", "eps"),
    "adamw": (*_COMMON, "betas", "eps"),
}
DEFAULT_LR = {"sgd": 0.01, "rmsprop": 0.01, "adam": 1e-3, "adamw": 1e-3}


def _param_groups(
    module: torch.nn.Module,
    weight_decay: float,
    decay_all: bool,
    lr: float,
    multipliers: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters in a decayed group and an undecayed one (biases and
    normalisation scales/shifts: every parameter of at most one dimension, as timm does),
    per lr multiplier (`multipliers`: layer pattern -> factor; the factor-1 groups first,
    so group 0's lr is the run's)."""
    split: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith(".bias")
        decayed = weight_decay != 0 and not (exempt and not decay_all)
        factor = multiplier_for(name, multipliers or {})
        split.setdefault((factor, decayed), []).append(param)
    if not split:
        raise UserError("nothing to train: every parameter of the network is frozen")
    # factor 1 first, then factors as first met; within one, the decayed group first
    factors = list(dict.fromkeys(factor for factor, _ in split))
    order = sorted(split, key=lambda key: (key[0] != 1.0, factors.index(key[0]), not key[1]))
    groups = []
    for factor, decayed in order:
        group: dict[str, Any] = {
            "params": split[(factor, decayed)],
            "weight_decay": weight_decay if decayed else 0.0,
        }
        if multipliers:
            group.update(lr=lr * factor, lr_multiplier=factor)
        groups.append(group)
    return groups


def build_optimizer(
    module: torch.nn.Module,
    config: dict[str, Any] | str | None,
    *,
    key: str = "training.optimizer",
    lr_multipliers: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer a `training.optimizer` setting names, over the trainable parameters.

    | type | options (defaults) |
    | --- | --- |
    | sgd | lr 0.01, momentum 0.9, nesterov false, weight_decay 0 |
    | rmsprop | lr 0.01, alpha 0.99, momentum 0, eps 1e-8, weight_decay 0 |
    | adam | lr 1e-3, betas [0.9, 0.999], eps 1e-8, weight_decay 0 (L2, added to the gradient) |
    | adamw | lr 1e-3, betas [0.9, 0.999], eps 1e-8, weight_decay 0.01 (decoupled) |

    Unset, it is sgd. Frozen parameters (requires_grad false) are left out.
    Weight decay skips biases and normalisation parameters (1-D) unless
    `decay_norm_and_bias: true`. `lr_multipliers` ({layer pattern: factor}, as
    Caffe's lr_mult) give the layers they pick `factor` × lr, kept through schedules.
    """
    kind, options = parse_typed(config, key, types=OPTIMIZERS, default="sgd", what="optimizer")
    lr = options.number("lr", DEFAULT_LR[kind], low=0, low_open=True)
    weight_decay = options.number("weight_decay", 0.01 if kind == "adamw" else 0.0, low=0)
    decay_all = options.boolean("decay_norm_and_bias", False)
    groups = _param_groups(module, weight_decay, decay_all, lr, lr_multipliers)
    if kind == "sgd":
        momentum = options.number("momentum", 0.9, low=0, high=1, high_open=True)
        nesterov = options.boolean("nesterov", False)
        if nesterov and momentum == 0:
            raise ConfigError(
                f"{key}.nesterov",
                "Nesterov momentum needs momentum > 0",
                expected="momentum > 0",
                found="momentum 0",
            )
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    eps = options.number("eps", 1e-8, low=0, low_open=True)
    if kind == "rmsprop":
        alpha = options.number("alpha", 0.99, low=0, high=1, high_open=True)
        momentum = options.number("momentum", 0.0, low=0, high=1, high_open=True)
        return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)
    beta1, beta2 = options.numbers("betas", [0.9, 0.999], length=2, low=0, high=1, high_open=True)
    optimizer = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
    return optimizer(groups, lr=lr, betas=(beta1, beta2), eps=eps)


SCHEDULES: dict[str, tuple[str, ...]] = {
    "none": ("warmup_epochs",),
    "step": ("warmup_epochs", "step_size", "gamma"),
    "cosine": ("warmup_epochs", "min_lr"),
    "plateau": ("warmup_epochs", "factor", "patience"),
}


class Schedule:
    """Sets each parameter group's lr from its base lr, the steps and epochs done so far.

    lr = base lr × warm-up × the type's own factor, applied to the optimizer at
    construction and after every `after_batch()` / `after_epoch()`, so it is
    always the lr of the next optimizer step. With W warm-up steps, the i-th
    step (1-based) uses warm-up i/W: a linear ramp from base/W to base.
    The base lr of each group is its `initial_lr` (set here from its `lr`, or
    restored with an optimizer state), so resuming continues the saved sequence.
    """

    kind = "none"

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup_steps: int, key: str) -> None:
        self.optimizer, self.warmup_steps, self.key = optimizer, warmup_steps, key
        self.base_lrs = [
            group.setdefault("initial_lr", group["lr"]) for group in optimizer.param_groups
        ]
        self.steps = 0
        self.epochs = 0
        self._apply()

    def lr(self) -> float:
        """The lr of parameter group 0 for the next optimizer step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_base_lr(self, lr: float) -> None:
        """Give every group the base lr `lr` from now on (an explicit --lr on resume); the
        steps and epochs done are kept, so warm-up and decay continue from where they were."""
        groups = self.optimizer.param_groups
        self.base_lrs = [float(lr) * group.get("lr_multiplier", 1.0) for group in groups]
        for group, base_lr in zip(groups, self.base_lrs):
            group["initial_lr"] = base_lr
        self._apply()

    def replan(self, end_step: int) -> str:
        """The run now ends after optimizer step `end_step` (a resume changed its length):
        re-plan what depends on it. Returns "" when nothing did, else how it changed."""
        return ""

    def after_batch(self) -> None:
        """Call after each optimizer step."""
        self.steps += 1
        self._apply()

    def after_epoch(self, metric: float | None = None) -> None:
        """Call after each epoch; `metric` is the validation loss (plateau needs it)."""
        self.epochs += 1
        self._end_epoch(metric)
        self._apply()

    def _end_epoch(self, metric: float | None) -> None:
        pass

    def _factor(self, base_lr: float) -> float:
        """This type's lr before warm-up, for a group whose base lr is `base_lr`."""
        return base_lr

    def _apply(self) -> None:
        warmup = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = warmup * self._factor(base_lr)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "steps": self.steps,
            "epochs": self.epochs,
            "base_lrs": list(self.base_lrs),
            **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved run: the lrs that follow are the ones it would have used."""
        if state.get("type") != self.kind:
            raise ConfigError(
                self.key,
                "the checkpoint was trained with another schedule",
                expected=f"'{state.get('type')}' (the checkpoint's)",
                found=f"'{self.kind}'",
                hint="resume with the run's schedule, or start a new run with --init-from",
            )
        if len(state["base_lrs"]) != len(self.optimizer.param_groups):
            raise UserError(
                f"the checkpoint's schedule has {len(state['base_lrs'])} "
                f"parameter groups, this optimizer "
                f"{len(self.optimizer.param_groups)}: was weight_decay changed?"
            )
        self.steps, self.epochs = int(state["steps"]), int(state["epochs"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["initial_lr"] = base_lr
        for name in self._extra_state():
            if name in state:  # a checkpoint from before a setting was kept keeps today's
                setattr(self, name, state[name])
        self._apply()


class StepSchedule(Schedule):
    """lr = base × gamma^⌊epochs done / step_size⌋, counting epochs from the start (warm-up too).

    The step size is saved with the state, so a resumed run keeps dropping as planned even
    when its default (a third of the run) would now be another."""

    kind = "step"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, step_size: int, gamma: float, **common: Any
    ) -> None:
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer, **common)

    def _factor(self, base_lr: float) -> float:
        return base_lr * self.gamma ** (self.epochs // self.step_size)

    def _extra_state(self) -> dict[str, Any]:
        return {"step_size": self.step_size}


class CosineSchedule(Schedule):
    """Per batch after warm-up: lr = min_lr + (base - min_lr)·½(1 + cos(π·u)), u the progress
    from 0 (base, the first step after warm-up) to 1 (min_lr, after the last step).

    As planned, u = t/T, t the steps since warm-up and T the steps after it. A resume that
    changes the run's end (`replan`) keeps the rate where it is: u goes on from its value
    now, linearly to 1 at the new end, which stretches (or squeezes) the rest of the curve
    and never makes it climb; a schedule that had already reached min_lr starts a new
    cosine from the base lr instead (a warm restart: more epochs at min_lr would be wasted).
    """

    kind = "cosine"

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, total_steps: int, min_lr: float, **common: Any
    ) -> None:
        self.min_lr = min_lr
        # u runs from start_progress at start_step to 1 at end_step
        self.start_step, self.start_progress = common["warmup_steps"], 0.0
        self.end_step = total_steps
        super().__init__(optimizer, **common)

    def progress(self) -> float:
        """u of the next step."""
        span = self.end_step - self.start_step
        if span <= 0:  # warm-up fills the whole run
            return self.start_progress
        done = min(max(self.steps - self.start_step, 0), span)
        return self.start_progress + (1 - self.start_progress) * done / span

    def replan(self, end_step: int) -> str:
        if end_step == self.end_step or end_step <= self.steps:
            return ""
        progress = self.progress()
        restart = progress >= 1
        self.start_step = max(self.steps, self.warmup_steps)
        self.start_progress = 0.0 if restart else progress
        self.end_step = end_step
        self._apply()
        return "restarts" if restart else "continues"

    def _factor(self, base_lr: float) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return self.min_lr + (base_lr - self.min_lr) * cosine

    def _extra_state(self) -> dict[str, Any]:
        return {
            "start_step": self.start_step,
            "start_progress": self.start_progress,
            "end_step": self.end_step,
        }


class PlateauSchedule(Schedule):
    """lr = base × factor^reductions; one reduction when the validation loss has not improved
    (fallen by more than 1e-4 relative to its best, as torch's ReduceLROnPlateau) for more
    than `patience` epochs in a row."""

    kind = "plateau"
    threshold = 1e-4

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, factor: float, patience: int, **common: Any
    ) -> None:
        self.factor, self.patience = factor, patience
        self.best, self.bad_epochs, self.scale = math.inf, 0, 1.0
        super().__init__(optimizer, **common)

    def _end_epoch(self, metric: float | None) -> None:
        if metric is None:
            raise ConfigError(
                self.key,
                "the plateau schedule needs a validation loss every epoch, and this run has none",
                hint="set training.val_fraction above 0, or use another schedule",
            )
        metric = float(metric)
        if metric < self.best * (1 - self.threshold):  # NaN never improves
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.scale *= self.factor
            self.bad_epochs = 0

    def _factor(self, base_lr: float) -> float:
        return base_lr * self.scale

    def _extra_state(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "scale": self.scale}


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any] | str | None,
    *,
    epochs: int,
    steps_per_epoch: int,
    key: str = "training.schedule",
) -> Schedule:
    """The lr schedule a `training.schedule` setting names, for `epochs` × `steps_per_epoch` steps.

    | type | options (defaults) |
    | --- | --- |
    | none | constant lr |
    | step | step_size (epochs, ⌈epochs / 3⌉), gamma 0.1 |
    | cosine | min_lr 0: per batch, over the steps after warm-up |
    | plateau | factor 0.1, patience 5: on the validation loss (mode min) |

    Each also takes `warmup_epochs` (0; may be fractional): a linear, per-batch
    ramp up to the base lr. Unset, the schedule is none.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise InternalError(f"build_scheduler: a run of {epochs} epochs × {steps_per_epoch} steps")
    kind, options = parse_typed(config, key, types=SCHEDULES, default="none", what="schedule")
    warmup_epochs = options.number("warmup_epochs", 0.0, low=0)
    # At least one step for any warm-up asked for; round() absorbs 0.3 * 10 = 3.0000000000000004.
    warmup_steps = max(1, round(warmup_epochs * steps_per_epoch)) if warmup_epochs else 0
    common: dict[str, Any] = {"warmup_steps": warmup_steps, "key": key}
    if kind == "step":
        step_size = options.number("step_size", max(1, math.ceil(epochs / 3)), integer=True, low=1)
        gamma = options.number("gamma", 0.1, low=0, high=1, low_open=True)
        return StepSchedule(optimizer, step_size=step_size, gamma=gamma, **common)
    if kind == "cosine":
        min_lr = options.number("min_lr", 0.0, low=0)
        lowest = min(group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
        if min_lr > lowest:
            raise ConfigError(
                f"{key}.min_lr",
                "must not exceed the optimizer's lr",
                expected=f"<= {lowest:g}",
                found=f"{min_lr:g}",
            )
        return CosineSchedule(
            optimizer, total_steps=epochs * steps_per_epoch, min_lr=min_lr, **common
        )
    if kind == "plateau":
        factor = options.number("factor", 0.1, low=0, high=1, low_open=True, high_open=True)
        patience = options.number("patience", 5, integer=True, low=0)
        return PlateauSchedule(optimizer, factor=factor, patience=patience, **common)
    return Schedule(optimizer, **common)


def clip_gradients(
    module: torch.nn.Module, max_norm: float | None, *, key: str = "training.clip_grad_norm"
) -> float:
    """The global L2 norm of all gradients, scaling them down to at most `max_norm` first.

    The norm is measured even when `max_norm` is None (no clipping), because the
    caller must skip a step whose norm is not finite rather than let inf or NaN
    into the weights; a non-finite norm leaves the gradients as they are.
    """
    if max_norm is not None:
        parent, _, name = key.rpartition(".")
        max_norm = Options({name: max_norm}, parent).number(name, None, low=0, low_open=True)
    params = [p for p in module.parameters() if p.grad is not None]
    if not params:
        return 0.0
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    norm = float(total)
    if max_norm is not None and math.isfinite(norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return norm

"""Optimizers step downhill over the trainable parameters only, decay what they should,
schedules follow their formulas and resume exactly, and bad settings are ConfigErrors."""

import copy
import io
import math

import pytest
import torch
from helpers import assert_close

from netc.errors import ConfigError, UserError, render
from netc.runtime.optim import build_optimizer, build_scheduler, clip_gradients


class Quadratic(torch.nn.Module):
    """f = Σ (W - 1)² + Σ (b + 2)²: one matrix (decayed) and one bias (not decayed)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)
        with torch.no_grad():
            self.layer.weight.fill_(3.0)
            self.layer.bias.fill_(1.0)

    def forward(self) -> torch.Tensor:
        return (self.layer.weight - 1).square().sum() + (self.layer.bias + 2).square().sum()


def _net() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 2)
    )


OPTIMIZER_CONFIGS = [
    None,
    {"type": "sgd", "lr": 0.05, "nesterov": True, "weight_decay": 1e-4},
    {"type": "sgd", "lr": 0.05, "momentum": 0.0},
    {"type": "rmsprop", "lr": 0.01, "momentum": 0.5},
    "adam",
    {"type": "adam", "lr": 0.05, "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 1e-3},
    {"type": "adamw", "lr": 0.05},
]


@pytest.mark.parametrize("config", OPTIMIZER_CONFIGS)
def test_every_optimizer_goes_downhill(config):
    model = Quadratic()
    optimizer = build_optimizer(model, config)
    before = model().item()
    for _ in range(5):
        optimizer.zero_grad()
        value = model()
        value.backward()
        optimizer.step()
    assert model().item() < before


def test_defaults():
    model = _net()
    sgd = build_optimizer(model, None)
    assert isinstance(sgd, torch.optim.SGD) and len(sgd.param_groups) == 1
    assert sgd.defaults["lr"] == 0.01 and sgd.defaults["momentum"] == 0.9
    assert sgd.defaults["nesterov"] is False and sgd.param_groups[0]["weight_decay"] == 0
    adam = build_optimizer(model, "adam")
    assert adam.defaults["lr"] == 1e-3 and adam.defaults["betas"] == (0.9, 0.999)
    assert adam.defaults["eps"] == 1e-8 and len(adam.param_groups) == 1
    adamw = build_optimizer(model, {"type": "adamw"})
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.01, 0.0]
    rmsprop = build_optimizer(model, {"type": "rmsprop"})
    assert rmsprop.defaults["alpha"] == 0.99 and rmsprop.defaults["momentum"] == 0
    no_type = build_optimizer(model, {"lr": 0.3})
    assert isinstance(no_type, torch.optim.SGD) and no_type.defaults["lr"] == 0.3


def test_frozen_parameters_are_left_out_and_untouched():
    model = _net()
    for param in model[0].parameters():
        param.requires_grad_(False)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    optimizer = build_optimizer(model, {"type": "adam", "lr": 0.1, "weight_decay": 0.1})
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model[1:].parameters()}
    model.train()
    model(torch.randn(8, 4)).square().sum().backward()
    optimizer.step()
    for before, after in zip(frozen, model[0].parameters()):
        assert torch.equal(before, after)


def test_everything_frozen_is_a_user_error():
    model = _net().requires_grad_(False)
    with pytest.raises(UserError, match="every parameter of the network is frozen"):
        build_optimizer(model, None)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_all", [False, True])
def test_weight_decay_skips_biases_and_norm_parameters(kind, decay_all):
    model = _net()
    config = {"type": kind, "lr": 0.1, "weight_decay": 0.5, "decay_norm_and_bias": decay_all}
    if kind == "sgd":
        config["momentum"] = 0.0
    optimizer = build_optimizer(model, config)
    matrices = [model[0].weight, model[2].weight]
    vectors = [model[0].bias, model[1].weight, model[1].bias, model[2].bias]
    if decay_all:
        assert len(optimizer.param_groups) == 1
    else:
        decayed, exempt = optimizer.param_groups
        assert decayed["weight_decay"] == 0.5 and exempt["weight_decay"] == 0.0
        assert [id(p) for p in decayed["params"]] == [id(p) for p in matrices]
        assert {id(p) for p in exempt["params"]} == {id(p) for p in vectors}
    before = [p.detach().clone() for p in matrices + vectors]
    for param in model.parameters():
        param.grad = torch.zeros_like(param)  # only decay moves anything
    optimizer.step()
    # Decay shrinks a parameter by lr·wd = 5% (sgd: p -= lr·wd·p; adamw: p *= 1 - lr·wd).
    for index, (param, old) in enumerate(zip(matrices + vectors, before)):
        exempt = index >= len(matrices) and not decay_all
        assert_close(param.detach(), old if exempt else old * 0.95, rtol=1e-6, atol=1e-7)


# --- schedules ---

EPOCHS, STEPS = 6, 4


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return build_optimizer(_net(), {"type": "sgd", "lr": lr, "weight_decay": 1e-4})


def _run(schedule, epochs, steps, metrics=None, start_epoch=0):
    """The lr of every optimizer step of epochs [start_epoch, epochs)."""
    lrs = []
    for epoch in range(start_epoch, epochs):
        for _ in range(steps):
            lrs.append(schedule.lr())
            schedule.after_batch()
        schedule.after_epoch(metrics[epoch] if metrics else None)
    return lrs


def test_none_is_constant():
    schedule = build_scheduler(_optimizer(), None, epochs=EPOCHS, steps_per_epoch=STEPS)
    assert _run(schedule, EPOCHS, STEPS) == [0.1] * EPOCHS * STEPS


def test_warmup_is_a_linear_ramp_per_batch():
    optimizer = _optimizer()
    schedule = build_scheduler(
        optimizer, {"type": "none", "warmup_epochs": 1.5}, epochs=EPOCHS, steps_per_epoch=STEPS
    )
    lrs = _run(schedule, 3, STEPS)
    assert_close(lrs, [0.1 * i / 6 for i in range(1, 7)] + [0.1] * 6, rtol=1e-12, atol=0)
    assert all(group["lr"] == lrs[-1] for group in optimizer.param_groups)


def test_step_drops_every_step_size_epochs():
    schedule = build_scheduler(
        _optimizer(),
        {"type": "step", "step_size": 2, "gamma": 0.5},
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
    )
    expected = [0.1 * 0.5 ** (epoch // 2) for epoch in range(EPOCHS) for _ in range(STEPS)]
    assert_close(_run(schedule, EPOCHS, STEPS), expected, rtol=1e-12, atol=0)


def test_step_default_size_is_a_third_of_the_run():
    schedule = build_scheduler(_optimizer(), "step", epochs=9, steps_per_epoch=1)
    assert_close(_run(schedule, 9, 1), [0.1] * 3 + [0.01] * 3 + [0.001] * 3, rtol=1e-12, atol=0)


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_cosine_endpoints_and_shape(warmup_epochs):
    optimizer = _optimizer()
    schedule = build_scheduler(
        optimizer,
        {"type": "cosine", "min_lr": 0.01, "warmup_epochs": warmup_epochs},
        epochs=EPOCHS,
        steps_per_epoch=STEPS,
    )
    lrs = _run(schedule, EPOCHS, STEPS)
    warmup = warmup_epochs * STEPS
    cosine_steps = EPOCHS * STEPS - warmup
    expected = [0.1 * (i + 1) / warmup for i in range(warmup)] + [
        0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / cosine_steps)) for t in range(cosine_steps)
    ]
    assert_close(lrs, expected, rtol=1e-12, atol=1e-15)
    assert lrs[warmup] == pytest.approx(0.1)  # the cosine starts at the base lr...
    assert lrs[warmup + cosine_steps // 2] == pytest.approx(0.055)  # ...halfway is the mean
    assert schedule.lr() == pytest.approx(0.01)  # ...and ends at min_lr
    schedule.after_batch()  # steps beyond the planned run stay at min_lr
    assert schedule.lr() == pytest.approx(0.01)


def test_plateau_reduces_after_patience():
    schedule = build_scheduler(
        _optimizer(),
        {"type": "plateau", "patience": 2, "factor": 0.5},
        epochs=10,
        steps_per_epoch=1,
    )
    metrics = [1.0, 0.9, 0.9, 0.95, 0.9, 0.8, 0.8, 0.8, 0.8, float("nan")]
    # Epochs 2, 3, 4 do not improve on 0.9: the third (> patience 2) halves the lr.
    # Epoch 5 improves; 6, 7, 8 do not: halved again.
    expected = [0.1] * 5 + [0.05] * 4 + [0.025]
    assert_close(_run(schedule, 10, 1, metrics), expected, rtol=1e-12, atol=0)


def test_plateau_needs_a_validation_loss():
    schedule = build_scheduler(_optimizer(), "plateau", epochs=3, steps_per_epoch=1)
    with pytest.raises(ConfigError, match="needs a validation loss") as error:
        schedule.after_epoch(None)
    assert error.value.key == "training.schedule"


RESUME_CONFIGS = [
    {"type": "none", "warmup_epochs": 3},
    {"type": "step", "step_size": 2, "warmup_epochs": 1},
    {"type": "cosine", "warmup_epochs": 1.5, "min_lr": 1e-3},
    {"type": "plateau", "patience": 1, "warmup_epochs": 1},
]
METRICS = [1.0, 0.8, 0.9, 0.9, 0.7, 0.75]


def _round_trip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("config", RESUME_CONFIGS)
@pytest.mark.parametrize("optimizer_first", [False, True])
def test_resume_continues_the_same_lrs(config, optimizer_first):
    optimizer = _optimizer()
    schedule = build_scheduler(optimizer, config, epochs=EPOCHS, steps_per_epoch=STEPS)
    whole = _run(copy.deepcopy(schedule), EPOCHS, STEPS, METRICS)
    # Interrupt in the middle of warm-up (none) or after it, at an epoch boundary.
    half = _run(schedule, 2, STEPS, METRICS)
    saved = _round_trip({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

    resumed_optimizer = _optimizer(lr=0.5)  # the checkpoint's lr wins on resume
    if optimizer_first:  # the trainer may restore the optimizer before building the schedule
        resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed = build_scheduler(resumed_optimizer, config, epochs=EPOCHS, steps_per_epoch=STEPS)
    resumed.load_state_dict(saved["schedule"])
    if not optimizer_first:
        resumed_optimizer.load_state_dict(saved["optimizer"])
    rest = _run(resumed, EPOCHS, STEPS, METRICS, start_epoch=2)
    assert half + rest == whole


def test_resume_mid_epoch():
    config = {"type": "cosine", "warmup_epochs": 1}
    schedule = build_scheduler(_optimizer(), config, epochs=EPOCHS, steps_per_epoch=STEPS)
    whole = _run(copy.deepcopy(schedule), EPOCHS, STEPS)
    for _ in range(6):
        schedule.after_batch()
    resumed = build_scheduler(_optimizer(), config, epochs=EPOCHS, steps_per_epoch=STEPS)
    resumed.load_state_dict(_round_trip(schedule.state_dict()))
    lrs = []
    for _ in range(len(whole) - 6):
        lrs.append(resumed.lr())
        resumed.after_batch()
    assert lrs == whole[6:]


def test_set_base_lr_keeps_the_position():
    config = {"type": "step", "step_size": 2, "warmup_epochs": 1}
    schedule = build_scheduler(_optimizer(), config, epochs=EPOCHS, steps_per_epoch=STEPS)
    _run(schedule, 2, STEPS)
    resumed = build_scheduler(_optimizer(), config, epochs=EPOCHS, steps_per_epoch=STEPS)
    resumed.load_state_dict(schedule.state_dict())
    resumed.set_base_lr(0.4)
    assert_close(_run(resumed, 4, STEPS, start_epoch=2), [0.04] * 2 * STEPS, rtol=1e-12, atol=0)
    assert resumed.state_dict()["base_lrs"] == [0.4, 0.4]


COSINE = {"type": "cosine", "min_lr": 0.01}


def _cosine(epochs: int):
    return build_scheduler(_optimizer(), COSINE, epochs=epochs, steps_per_epoch=STEPS)


def _cosine_resumed(done_epochs: int, planned: int, new: int):
    """A cosine run planned over `planned` epochs, stopped after `done_epochs` and resumed
    to end after `new`: (the lrs it used, the resumed schedule, what replan said)."""
    schedule = _cosine(planned)
    used = _run(schedule, done_epochs, STEPS)
    resumed = _cosine(new)
    resumed.load_state_dict(_round_trip(schedule.state_dict()))
    said = resumed.replan(resumed.steps + (new - done_epochs) * STEPS)
    return used, resumed, said


def test_a_longer_resumed_cosine_continues_from_its_rate_without_a_climb():
    used, resumed, said = _cosine_resumed(2, planned=4, new=8)
    rest = _run(resumed, 8, STEPS, start_epoch=2)
    assert said == "continues"
    # the next rate is the one the planned run would have used next: no jump...
    assert rest[0] == pytest.approx(_run(_cosine(4), 4, STEPS)[len(used)])
    assert rest == sorted(rest, reverse=True) and len(set(rest)) == len(rest)  # ...only falls...
    resumed.after_batch()
    assert resumed.lr() == pytest.approx(0.01)  # ...to min_lr at the new end
    assert rest[-1] > 0.01


def test_a_finished_cosine_resumed_for_more_epochs_restarts_from_the_base_lr():
    used, resumed, said = _cosine_resumed(4, planned=4, new=6)
    assert said == "restarts" and used[-1] < 0.011
    rest = _run(resumed, 6, STEPS, start_epoch=4)
    expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert_close(rest, expected, rtol=1e-12, atol=1e-15)
    assert _round_trip(resumed.state_dict())["end_step"] == 6 * STEPS


def test_the_same_plan_resumed_changes_nothing():
    used, resumed, said = _cosine_resumed(2, planned=4, new=4)
    assert said == ""
    assert used + _run(resumed, 4, STEPS, start_epoch=2) == _run(_cosine(4), 4, STEPS)


def test_a_step_schedule_keeps_its_default_step_size_on_resume():
    schedule = build_scheduler(_optimizer(), "step", epochs=6, steps_per_epoch=1)  # size 2
    used = _run(schedule, 6, 1)
    resumed = build_scheduler(_optimizer(), "step", epochs=9, steps_per_epoch=1)  # size 3
    resumed.load_state_dict(_round_trip(schedule.state_dict()))
    assert resumed.replan(9) == ""
    expected = [0.1 * 0.1 ** (epoch // 2) for epoch in range(9)]  # as planned: every 2 epochs
    assert_close(used + _run(resumed, 9, 1, start_epoch=6), expected, rtol=1e-12, atol=0)


def test_resume_with_another_schedule_is_an_error():
    schedule = build_scheduler(_optimizer(), "cosine", epochs=EPOCHS, steps_per_epoch=STEPS)
    other = build_scheduler(_optimizer(), "step", epochs=EPOCHS, steps_per_epoch=STEPS)
    with pytest.raises(ConfigError, match="another schedule"):
        other.load_state_dict(schedule.state_dict())


# --- gradient clipping ---


def _with_gradients(scale: float) -> torch.nn.Module:
    model = _net()
    for param in model.parameters():
        param.grad = torch.full_like(param, scale)
    return model


def _global_norm(model: torch.nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.square().sum()) for p in model.parameters()))


def test_clipping_scales_to_the_max_norm():
    model = _with_gradients(1.0)
    count = sum(p.numel() for p in model.parameters())
    norm = clip_gradients(model, 2.0)
    assert_close(norm, math.sqrt(count), rtol=1e-6, atol=0)
    assert_close(_global_norm(model), 2.0, rtol=1e-5, atol=0)


def test_clipping_below_the_max_norm_changes_nothing():
    model = _with_gradients(1e-3)
    before = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model, 10.0) == pytest.approx(_global_norm(model))
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


def test_clipping_off_and_edge_cases():
    model = _with_gradients(1.0)
    before = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model, None) == pytest.approx(_global_norm(model))  # measured only
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))
    assert clip_gradients(_net(), 1.0) == 0.0  # no gradients yet
    model[0].weight.grad[0, 0] = float("inf")
    before = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model, 1.0) == math.inf
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("value", [0, -1.0, "1", True, float("nan")])
def test_bad_clip_norm(value):
    with pytest.raises(ConfigError) as error:
        clip_gradients(_with_gradients(1.0), value)
    assert error.value.key == "training.clip_grad_norm"
    assert "error: training.clip_grad_norm: " in render(error.value)


# --- bad settings: ConfigError on the dotted key ---


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ("adamm", "training.optimizer", ["unknown optimizer", "did you mean 'adam'"]),
        ({"type": "SGD"}, "training.optimizer.type", ["did you mean 'sgd'"]),
        ([0.1], "training.optimizer", ["list [0.1]"]),
        (
            {"type": "sgd", "learning_rate": 0.1},
            "training.optimizer.learning_rate",
            ["unknown option for optimizer 'sgd'"],
        ),
        ({"type": "sgd", "betas": [0.9, 0.99]}, "training.optimizer.betas", ["unknown option"]),
        ({"type": "adam", "lrr": 0.1}, "training.optimizer.lrr", ["did you mean 'lr'"]),
        ({"lr": 0}, "training.optimizer.lr", ["> 0", "integer 0"]),
        ({"lr": -0.1}, "training.optimizer.lr", ["> 0"]),
        ({"lr": "1e-3"}, "training.optimizer.lr", ["must be a number", "1.0e-3"]),
        ({"lr": float("inf")}, "training.optimizer.lr", ["finite"]),
        ({"momentum": 1.0}, "training.optimizer.momentum", ["[0, 1)", "number 1.0"]),
        ({"momentum": -0.5}, "training.optimizer.momentum", ["[0, 1)"]),
        ({"momentum": 0, "nesterov": True}, "training.optimizer.nesterov", ["momentum > 0"]),
        ({"nesterov": "yes"}, "training.optimizer.nesterov", ["true or false", "string 'yes'"]),
        ({"weight_decay": -1e-4}, "training.optimizer.weight_decay", [">= 0"]),
        ({"decay_norm_and_bias": 1}, "training.optimizer.decay_norm_and_bias", ["true or false"]),
        ({"type": "rmsprop", "alpha": 1.5}, "training.optimizer.alpha", ["[0, 1)"]),
        ({"type": "rmsprop", "eps": 0}, "training.optimizer.eps", ["> 0"]),
        ({"type": "adam", "betas": 0.9}, "training.optimizer.betas", ["a list of 2 numbers"]),
        (
            {"type": "adam", "betas": [0.9]},
            "training.optimizer.betas",
            ["expected 2 entries", "found 1 entries"],
        ),
        ({"type": "adamw", "betas": [0.9, 1.0]}, "training.optimizer.betas[1]", ["[0, 1)"]),
        (
            {"type": "adam", "betas": [0.9, None]},
            "training.optimizer.betas[1]",
            ["must be a number", "nothing (null)"],
        ),
    ],
)
def test_bad_optimizer_settings(config, key, words):
    with pytest.raises(ConfigError) as error:
        build_optimizer(_net(), config)
    assert error.value.key == key
    assert f"error: {key}: " in render(error.value)
    for word in words:
        assert word in str(error.value), str(error.value)


@pytest.mark.parametrize(
    ("config", "key", "words"),
    [
        ("cosin", "training.schedule", ["unknown schedule", "did you mean 'cosine'"]),
        ({"type": "exponential"}, "training.schedule.type", ["none or step or cosine or plateau"]),
        ({"type": "cosine", "gamma": 0.1}, "training.schedule.gamma", ["unknown option"]),
        (
            {"type": "step", "warmup": 1},
            "training.schedule.warmup",
            ["did you mean 'warmup_epochs'"],
        ),
        ({"type": "step", "step_size": 0}, "training.schedule.step_size", [">= 1"]),
        ({"type": "step", "step_size": 2.5}, "training.schedule.step_size", ["an integer"]),
        ({"type": "step", "gamma": 0}, "training.schedule.gamma", ["(0, 1]"]),
        ({"type": "cosine", "min_lr": 0.5}, "training.schedule.min_lr", ["<= 0.1", "found 0.5"]),
        ({"type": "cosine", "min_lr": -1.0}, "training.schedule.min_lr", [">= 0"]),
        ({"type": "plateau", "factor": 1.0}, "training.schedule.factor", ["(0, 1)"]),
        ({"type": "plateau", "patience": -1}, "training.schedule.patience", [">= 0"]),
        ({"type": "none", "warmup_epochs": -1}, "training.schedule.warmup_epochs", [">= 0"]),
        ({"warmup_epochs": None}, "training.schedule.warmup_epochs", ["nothing (null)"]),
    ],
)
def test_bad_schedule_settings(config, key, words):
    with pytest.raises(ConfigError) as error:
        build_scheduler(_optimizer(), config, epochs=EPOCHS, steps_per_epoch=STEPS)
    assert error.value.key == key
    assert f"error: {key}: " in render(error.value)
    for word in words:
        assert word in str(error.value), str(error.value)

"""`netc train` end to end on small nets: checkpoints, metrics, resume, divergence,
fine-tuning, freezing, bad data, and a 2-process DDP run."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import assert_close
from PIL import Image

from netc.cli import main
from netc.runtime import checkpoint
from netc.runtime.train import train

TINY = """\
name: tiny_digits
params: {num_classes: 10, hidden: 32}
inputs: {image: [1, 8, 8]}
layers:
  - {name: conv1, op: conv, channels: 8, kernel: 3, padding: 1, init: he}
  - {name: relu1, op: relu}
  - {name: pool1, op: max_pool, kernel: 2}
  - {name: flatten, op: flatten}
  - {name: fc1, op: fc, units: $hidden, init: he}
  - {name: relu2, op: relu}
  - {name: fc2, op: fc, units: $num_classes}
training:
  epochs: 2
  batch_size: 64
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9}
  schedule: none
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def _losses(run_dir):
    return [
        json.loads(line)["loss"]
        for line in (run_dir / "metrics.jsonl").read_text().split("\n")
        if line
    ]


def test_training_writes_checkpoints_and_metrics(tiny, tmp_path):
    run = tmp_path / "run"
    result = train(tiny, "digits", run, quiet=True)
    assert result.epochs_run == 2 and result.metric == "val_accuracy"
    assert result.best_metric > 0.8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert list(rows[0]) == [
        "epoch", "loss", "train_accuracy", "lr", "val_loss", "val_accuracy", "seconds"
    ]  # fmt: skip
    assert 0.5 < rows[1]["train_accuracy"] <= 1 and result.best_metric == rows[1]["val_accuracy"]
    state = checkpoint.load(run / "last.pt")
    assert state["epoch"] == 2 and state["labels"] == [str(i) for i in range(10)]
    assert len(state["preprocessing"]["mean"]) == 1
    assert state["description"] == open(tiny).read()
    assert (run / "best.pt").exists() and (run / "network.yaml").exists()


def test_resume_reproduces_an_uninterrupted_run(tiny, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    one = {"threads": 1}  # bit for bit needs the same thread count (reduction order)
    train(tiny, "digits", whole, overrides={"epochs": 4, **one}, quiet=True)
    train(tiny, "digits", split, overrides={"epochs": 2, **one}, quiet=True)
    train(tiny, "digits", split, overrides={"epochs": 4, **one}, resume=True, quiet=True)
    assert_close(_losses(split), _losses(whole), rtol=1e-6, atol=0, what="loss per epoch")
    a, b = checkpoint.load(whole / "last.pt"), checkpoint.load(split / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_an_existing_run_is_not_overwritten(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny, "digits", run, overrides={"epochs": 1}, quiet=True)
    assert main(["train", tiny, "--data", "digits", "--out", str(run), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny, "digits", run, overrides={"epochs": 1}, quiet=True)
    before = checkpoint.load(run / "last.pt")
    code = main(
        [
            "train",
            tiny,
            "--data",
            "digits",
            "--out",
            str(run),
            "--resume",
            "--epochs",
            "3",
            "--lr",
            "1e12",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    # the loss, or first the gradients (skipped, never applied), overflow
    assert code == 2 and "training stopped" in err and "Traceback" not in err
    after = checkpoint.load(run / "last.pt")
    assert after["epoch"] == 1
    for key in before["model"]:
        assert torch.equal(before["model"][key], after["model"][key])


def test_fine_tuning_reports_loaded_new_and_skipped_layers(tiny, tmp_path, capsys):
    base = tmp_path / "base"
    train(tiny, "digits", base, overrides={"epochs": 1}, quiet=True)
    head = tmp_path / "head.yaml"
    head.write_text(
        TINY.replace(
            "{name: fc1, op: fc, units: $hidden, init: he}",
            "{name: fc1, op: fc, units: 48, init: he}",
        )
        .replace(
            "{name: conv1, op: conv, channels: 8, kernel: 3, padding: 1, init: he}",
            "{name: conv1, op: conv, channels: 8, kernel: 3, padding: 1, "
            "init: he, trainable: false}",
        )
        .replace(
            "  - {name: fc2, op: fc, units: $num_classes}",
            "  - {name: extra, op: fc, units: 16}\n  - {name: fc2, op: fc, units: $num_classes}",
        )
    )
    code = main(
        [
            "train",
            str(head),
            "--data",
            "digits",
            "--out",
            str(tmp_path / "ft"),
            "--init-from",
            str(base),
            "--epochs",
            "1",
        ]
    )
    assert code == 0
    err = capsys.readouterr().err
    assert "loaded 1 layers: conv1" in err
    assert "new (freshly initialised): extra" in err
    assert "skipped fc1: shape" in err and "skipped fc2: shape" in err
    trained = checkpoint.load(tmp_path / "ft" / "last.pt")["model"]
    original = checkpoint.load(base)["model"]
    assert torch.equal(trained["conv1.weight"], original["conv1.weight"])  # frozen
    assert torch.equal(trained["conv1.bias"], original["conv1.bias"])


def _npz(tmp_path, x, y, name="data.npz"):
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return str(path)


def _image_folder_with_a_broken_file(root):
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / label / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n not really")
    return str(root)


def _segmentation_folder_with_a_wrong_mask(root):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / f"{i}.png")
        size = (8, 8) if i else (6, 8)
        Image.fromarray(np.zeros(size, np.uint8)).save(root / "masks" / f"{i}.png")
    return str(root)


@pytest.mark.parametrize(
    "case",
    ["missing", "labels", "batch", "channels", "empty", "unreadable", "mask", "range", "one class"],
)
def test_bad_data_exits_2_and_writes_nothing(tiny, tmp_path, capsys, case):
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    data = {
        "missing": str(tmp_path / "nowhere"),
        "labels": _npz(tmp_path, x, np.arange(40) % 12, "labels.npz"),
        "batch": _npz(tmp_path, x, np.arange(40) % 10, "batch.npz"),
        "channels": _npz(
            tmp_path,
            rng.random((40, 3, 8, 8)).astype(np.float32),
            np.arange(40) % 10,
            "channels.npz",
        ),
        "empty": str(tmp_path / "empty_dir"),
    }.get(case)
    if case == "unreadable":
        data = _image_folder_with_a_broken_file(tmp_path / "folder")
    elif case == "mask":
        data = _segmentation_folder_with_a_wrong_mask(tmp_path / "seg")
    elif case == "range":  # named classes, one label beyond them
        data = str(tmp_path / "range.npz")
        labels = np.arange(40) % 10
        labels[7] = 12
        np.savez(data, x=x, y=labels, classes=np.array([str(i) for i in range(10)]))
    elif case == "one class":
        data = str(tmp_path / "one.npz")
        np.savez(data, x=x, y=np.zeros(40, np.int64), classes=np.array(["cat"]))
    if case == "empty":
        (tmp_path / "empty_dir").mkdir()
    run = tmp_path / "run"
    code = main(
        ["train", tiny, "--data", data, "--out", str(run), "--quiet", "--set", "num_classes=10"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") <= 3
    expected = {
        "missing": "nowhere",
        "labels": "has 12",
        "batch": "batch size 64",
        "channels": "3-channel",
        "empty": "empty_dir",
        "unreadable": "broken.png",
        "mask": "0.png",
        "range": "12",
        "one class": "has only the class 'cat'; a classification network needs at least two",
    }[case]
    assert expected in err
    assert not run.exists()


def test_two_processes_match_one_process_on_the_same_global_batch(tiny, tmp_path):
    net = tmp_path / "ddp.yaml"
    net.write_text(TINY.replace("epochs: 2", "epochs: 1"))
    single, double = tmp_path / "single", tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [str(net), "--data", "digits", "--quiet", "--device", "cpu"]
    for out, extra in ((single, []), (double, ["--nproc", "2"])):
        result = subprocess.run(
            [sys.executable, "-m", "netc", "train", *common, "--out", str(out), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    a, b = checkpoint.load(single / "last.pt"), checkpoint.load(double / "last.pt")
    for key in a["model"]:
        # Same global batches; only the order of the gradient all-reduce sum differs.
        assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, what=key)


@pytest.mark.parametrize(
    "setting",
    [
        {"balanced_sampling": True},
        {"pca_whitening": True, "augment": {"crop_padding": 1, "hflip": True}},
        {"loss": "hinge", "optimizer": {"type": "rmsprop", "lr": 1.0e-3}},
        {"schedule": {"type": "plateau", "patience": 0}, "clip_grad_norm": 1.0},
    ],
)
def test_training_options_run_end_to_end(tiny, tmp_path, setting):
    result = train(tiny, "digits", tmp_path / "run", overrides={"epochs": 2, **setting}, quiet=True)
    assert result.best_metric > 0.5
    assert checkpoint.load(tmp_path / "run")["config"]["epochs"] == 2


def test_segmentation_training_reports_mean_iou(tmp_path):
    result = train(
        "tinyseg", "shapes", tmp_path / "seg", overrides={"epochs": 1, "batch_size": 32}, quiet=True
    )
    assert result.metric == "val_mean_iou"
    row = result.history[0]
    assert 0.0 < row["val_mean_iou"] <= 1.0 and row["val_loss"] > 0
    assert 0.0 < row["train_mean_iou"] <= 1.0 and "accuracy" not in row
    assert checkpoint.load(tmp_path / "seg")["labels"] == [
        "background",
        "circle",
        "square",
        "triangle",
    ]


def test_without_a_validation_split_best_is_the_lowest_training_loss(tiny, tmp_path):
    run = tmp_path / "run"
    result = train(tiny, "digits", run, overrides={"val_fraction": 0, "epochs": 3}, quiet=True)
    losses = _losses(run)
    assert result.metric == "loss"
    assert result.best_epoch == 1 + int(np.argmin(losses))
    assert result.best_metric == min(losses)


def test_resume_keeps_the_runs_split(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny, "digits", run, overrides={"epochs": 1}, quiet=True)
    args = ["train", tiny, "--data", "digits", "--out", str(run), "--resume", "--quiet"]
    assert main([*args, "--epochs", "2", "--seed", "5"]) == 2
    assert "--resume keeps the run's seed (0); found 5" in capsys.readouterr().err


def test_frozen_batch_norm_without_affine_keeps_its_statistics(tmp_path):
    spec = tmp_path / "bn.yaml"
    spec.write_text(
        TINY.replace(
            "  - {name: relu1, op: relu}",
            "  - {name: bn1, op: batch_norm, affine: false, trainable: false}\n"
            "  - {name: relu1, op: relu}",
        )
    )
    run = tmp_path / "run"
    train(str(spec), "digits", run, overrides={"epochs": 1}, quiet=True)
    state = checkpoint.load(run / "last.pt")["model"]
    assert torch.equal(state["bn1.running_mean"], torch.zeros(8))
    assert torch.equal(state["bn1.running_var"], torch.ones(8))


@pytest.mark.parametrize(
    ("training", "extra", "message"),
    [
        ("", ["--seed", "20000000000000"], "seed"),
        ("  input_size: [28, 28]\n", [], "differs from tiny_digits's fixed input size [8, 8]"),
        ("  metric: mean_iou\n", [], "a classification network is judged by accuracy or loss"),
    ],
)
def test_bad_settings_exit_2_before_training(tmp_path, capsys, training, extra, message):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY + training)
    run = tmp_path / "run"
    args = ["train", str(spec), "--data", "digits", "--out", str(run), "--quiet", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "internal error" not in err
    assert not run.exists()  # refused before anything was written


def test_unusable_run_directory_and_empty_init_from_are_clear_errors(tiny, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    args = ["train", tiny, "--data", "digits", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "afile")]) == 2
    assert "cannot make the run directory" in capsys.readouterr().err
    seg = tmp_path / "seg"
    assert main(["train", "tinyseg", "--data", "shapes", "--epochs", "1", "--out", str(seg)]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "run"), "--init-from", str(seg)]) == 2
    assert "no layer of tiny_digits matches the checkpoint" in capsys.readouterr().err


def _adam_steps(run_dir):
    state = checkpoint.load(run_dir / "last.pt")["optimizer"]["state"]
    return {int(entry["step"]) for entry in state.values()}


def test_a_step_with_a_non_finite_gradient_is_skipped(tiny, tmp_path, monkeypatch):
    from netc.runtime import session

    clip = session.clip_gradients
    calls = []

    def flaky(module, max_norm):  # the 2nd to 4th batches' gradients overflow
        calls.append(1)
        return float("inf") if 2 <= len(calls) <= 4 else clip(module, max_norm)

    monkeypatch.setattr(session, "clip_gradients", flaky)
    overrides = {"epochs": 1, "clip_grad_norm": 5.0, "optimizer": {"type": "adam", "lr": 1e-3}}
    result = train(tiny, "digits", tmp_path / "run", overrides=overrides, quiet=True)
    assert _adam_steps(tmp_path / "run") == {len(calls) - 3}  # three steps skipped
    assert result.best_metric > 0.3  # and the weights stayed finite


def test_gradients_that_stay_non_finite_stop_training(tiny, tmp_path, monkeypatch, capsys):
    from netc.runtime import session

    monkeypatch.setattr(session, "clip_gradients", lambda module, max_norm: float("nan"))
    args = ["train", tiny, "--data", "digits", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) == 2  # TINY's loss is finite; only its gradients are not
    err = capsys.readouterr().err
    assert "the gradient norm was nan for 10 batches in a row" in err, err
    assert "Traceback" not in err


def _overflowing_gradients(monkeypatch, batches):
    """fc2.weight's gradient is infinite on the given (1-based) batches of the run."""
    from netc.runtime import session

    build = session.build_module
    seen = []

    def poisoned(graph, seed):
        module = build(graph, seed=seed)

        def hook(grad):
            seen.append(1)
            return grad * math.inf if len(seen) in batches else grad

        module.fc2.weight.register_hook(hook)
        return module

    monkeypatch.setattr(session, "build_module", poisoned)
    return seen


def test_without_clip_grad_norm_a_non_finite_gradient_never_reaches_the_weights(
    tiny, tmp_path, monkeypatch
):
    seen = _overflowing_gradients(monkeypatch, {2, 3, 4})
    overrides = {"epochs": 1, "optimizer": {"type": "adam", "lr": 1e-3}}
    result = train(tiny, "digits", tmp_path / "run", overrides=overrides, quiet=True)
    assert _adam_steps(tmp_path / "run") == {len(seen) - 3}  # three steps skipped
    weights = checkpoint.load(tmp_path / "run" / "last.pt")["model"]
    assert all(bool(torch.isfinite(value).all()) for value in weights.values())
    assert result.best_metric > 0.3


def _recording_lrs(monkeypatch):
    """The lr of every optimizer step the run takes, in order."""
    from netc.runtime import trained_params

    build = trained_params.build_optimizer
    used = []

    def recording(module, config, **options):
        optimizer = build(module, config, **options)
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"])
        )
        return optimizer

    monkeypatch.setattr(trained_params, "build_optimizer", recording)
    return used


def test_each_rows_lr_is_the_rate_its_epoch_started_with(tiny, tmp_path, monkeypatch):
    used = _recording_lrs(monkeypatch)
    overrides = {"epochs": 3, "schedule": "cosine"}
    result = train(tiny, "digits", tmp_path / "run", overrides=overrides, quiet=True)
    steps = len(used) // 3
    assert [row["lr"] for row in result.history] == used[::steps]
    assert result.history[-1]["lr"] > 0


def test_seconds_continue_from_the_previous_runs_total_on_resume(tiny, tmp_path):
    run = tmp_path / "run"
    train(tiny, "digits", run, overrides={"epochs": 1}, quiet=True)
    state = checkpoint.load(run / "last.pt")
    state["history"][-1]["seconds"] = 1000.0  # as if the first run had taken that long
    checkpoint.save(run / "last.pt", state)
    result = train(tiny, "digits", run, overrides={"epochs": 2}, resume=True, quiet=True)
    assert 1000.0 < result.history[-1]["seconds"] < 1000.0 + result.seconds + 1


def _epoch_lines(err):
    return [line for line in err.splitlines() if line.startswith("epoch ")]


@pytest.mark.parametrize("metric", ["accuracy", "val_accuracy", "loss", "val_loss"])
def test_training_metric_takes_old_and_validation_names(tiny, tmp_path, metric, capsys):
    run = tmp_path / "run"
    overrides = {"epochs": 1, "metric": metric}
    result = train(tiny, "digits", run, overrides=overrides)
    assert result.metric == ("val_loss" if "loss" in metric else "val_accuracy")
    line = _epoch_lines(capsys.readouterr().err)[0]
    assert "  loss " in line and "  train_accuracy " in line
    assert "  val_loss " in line and "  val_accuracy " in line


def _with_old_names(run):
    """Rewrite a run as netc wrote it before the validation figures were named val_*."""
    for name in ("last.pt", "best.pt"):
        state = checkpoint.load(run / name)
        for row in state["history"]:
            row["accuracy"] = row.pop("val_accuracy")
            del row["train_accuracy"]
        state["config"]["metric"] = "accuracy"
        torch.save(state, run / name)  # as written, without load's renaming
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row["accuracy"] = row.pop("val_accuracy")
        del row["train_accuracy"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_a_run_with_the_old_metric_names_resumes_and_exports(tiny, tmp_path):
    run = tmp_path / "run"
    first = train(tiny, "digits", run, overrides={"epochs": 1}, quiet=True)
    _with_old_names(run)
    assert checkpoint.load(run)["history"][0]["val_accuracy"] == first.best_metric
    result = train(tiny, "digits", run, overrides={"epochs": 2}, resume=True, quiet=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert ["accuracy" in row for row in rows] == [False, False]
    assert rows[0]["val_accuracy"] == first.best_metric and "train_accuracy" in rows[1]
    best = max(row["val_accuracy"] for row in rows)
    assert result.best_metric == best and result.best_epoch == 1 + [
        row["val_accuracy"] for row in rows
    ].index(best)
    assert main(["export", str(run), "-o", str(tmp_path / "model.onnx")]) == 0


def _with_batch_norm_after(layer):
    """TINY with a batch norm between `layer` (conv1 or fc1) and its relu."""
    relu = "  - {name: relu2, op: relu}" if layer == "fc1" else "  - {name: relu1, op: relu}"
    return TINY.replace(relu, "  - {name: bn1, op: batch_norm}\n" + relu)


def test_a_batch_of_one_through_a_batch_norm_over_fc_is_refused(tmp_path, capsys):
    spec = tmp_path / "bn_fc.yaml"
    spec.write_text(_with_batch_norm_after("fc1"))  # BN over (N, 32): N values per channel
    run = tmp_path / "run"
    args = ["train", str(spec), "--data", "digits", "--out", str(run), "--batch-size", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err
    assert "'bn1'" in err and "one value per channel" in err and "--batch-size 2" in err
    assert not run.exists()  # refused before anything was written


def test_a_batch_of_one_trains_a_conv_batch_norm_and_a_remainder_sits_out(tmp_path, capsys):
    spec = tmp_path / "bn_conv.yaml"
    spec.write_text(_with_batch_norm_after("conv1"))  # BN over (N, 8, 8, 8): 64 values per channel
    rng = np.random.default_rng(0)
    data = _npz(tmp_path, rng.random((12, 1, 8, 8)).astype(np.float32), np.arange(12) % 2)
    run = tmp_path / "run"
    common = ["--data", data, "--val-fraction", "0", "--epochs", "2"]
    assert main(["train", str(spec), *common, "--out", str(run), "--batch-size", "1"]) == 0
    assert "leaves out" not in capsys.readouterr().err
    fc_spec = tmp_path / "bn_fc.yaml"
    fc_spec.write_text(_with_batch_norm_after("fc1"))
    out = tmp_path / "fc"
    assert main(["train", str(fc_spec), *common, "--out", str(out), "--batch-size", "11"]) == 0
    err = capsys.readouterr().err
    assert err.count("leaves out") == 1 and "leaves out 1 of the 12 training samples" in err, err


def _threads_in_training(monkeypatch):
    from netc.runtime import session

    seen = set()
    step = session.Session.step

    def recording(self, *args):
        seen.add(torch.get_num_threads())
        return step(self, *args)

    monkeypatch.setattr(session.Session, "step", recording)
    return seen


@pytest.mark.parametrize("threads", [1, 3])
def test_the_threads_flag_sets_torchs_threads_for_training(
    tiny, tmp_path, monkeypatch, capsys, threads
):
    seen = _threads_in_training(monkeypatch)
    before = torch.get_num_threads()
    args = ["train", tiny, "--data", "digits", "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*args, "--threads", str(threads)]) == 0
    assert seen == {threads} and torch.get_num_threads() == before  # and given back
    err = capsys.readouterr().err
    assert err.count(f"note: training on {threads} CPU thread") == 1, err
    assert checkpoint.load(tmp_path / "run")["config"]["threads"] == threads


def test_a_tiny_net_trains_on_one_thread_and_the_timing_leaves_the_run_alone(
    tiny, tmp_path, monkeypatch, capsys
):
    from netc.runtime import session

    timer = session.step_timer
    timed = []

    def short_steps(*args):  # the real probe runs; its clock says a step takes 0.5 ms
        measure = timer(*args)
        return lambda count: timed.append(measure(count)) or 0.0005

    monkeypatch.setattr(session, "step_timer", short_steps)
    seen = _threads_in_training(monkeypatch)
    measured, pinned = tmp_path / "measured", tmp_path / "pinned"
    before = torch.get_num_threads()
    torch.set_num_threads(4)  # torch's default on a 4-core machine
    try:
        train(tiny, "digits", measured, overrides={"epochs": 1})
        assert seen == {1} and len(timed) == 1 and torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
    assert (
        "note: training on 1 CPU thread (a step takes 0.5 ms, too short" in capsys.readouterr().err
    )
    train(tiny, "digits", pinned, overrides={"epochs": 1, "threads": 1}, quiet=True)
    a, b = checkpoint.load(measured / "last.pt"), checkpoint.load(pinned / "last.pt")
    for key in a["model"]:  # the timed copy touched neither weights, statistics nor RNG
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.parametrize("saved_plan", [True, False])
def test_a_finished_cosine_run_resumed_for_more_epochs_restarts_as_it_says(
    tiny, tmp_path, monkeypatch, capsys, saved_plan
):
    run = tmp_path / "run"
    overrides = {"epochs": 2, "schedule": "cosine", "threads": 1}
    train(tiny, "digits", run, overrides=overrides, quiet=True)
    if not saved_plan:  # a checkpoint from before the plan was saved with the schedule
        state = checkpoint.load(run / "last.pt")
        for key in ("start_step", "start_progress", "end_step"):
            del state["scheduler"][key]
        checkpoint.save(run / "last.pt", state)
    used = _recording_lrs(monkeypatch)
    result = train(tiny, "digits", run, overrides={**overrides, "epochs": 4}, resume=True)
    err = capsys.readouterr().err
    assert "note: resuming" in err and "after epoch 2: epochs 3-4" in err
    assert "epochs 3-4: a new cosine from the base lr 0.05 down to 0 (a warm restart)" in err
    steps = len(used) // 2
    assert used[0] == pytest.approx(0.05) and result.history[2]["lr"] == used[0]
    assert used == sorted(used, reverse=True) and used[-1] > 0
    assert used[steps] == pytest.approx(0.025, rel=0.05)  # halfway down at epoch 4


def test_an_interrupted_cosine_run_resumed_for_more_epochs_goes_on_without_a_climb(
    tiny, tmp_path, monkeypatch, capsys
):
    from netc.runtime import session

    end_epoch = session.Session.end_epoch

    def interrupted_after_2(self, row, started):
        end_epoch(self, row, started)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(session.Session, "end_epoch", interrupted_after_2)
    run = tmp_path / "run"
    overrides = {"epochs": 4, "schedule": "cosine", "threads": 1}
    planned = _recording_lrs(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(tiny, "digits", run, overrides=overrides, quiet=True)
    monkeypatch.undo()
    used = _recording_lrs(monkeypatch)
    train(tiny, "digits", run, overrides={**overrides, "epochs": 6}, resume=True)
    err = capsys.readouterr().err
    assert "re-planned for 6 epochs (planned: 4): the lr goes on from 0.025" in err
    steps = len(planned) // 2
    next_planned = 0.025 + 0.025 * math.cos(math.pi * (2 * steps + 1) / (4 * steps))
    assert used[0] == pytest.approx(0.025) and planned[-1] > used[0]  # where the plan was
    assert used[1] > next_planned and used == sorted(used, reverse=True)  # stretched, falling

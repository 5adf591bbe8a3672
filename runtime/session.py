"""Steps 3-5 of a run: the module, optimizer and schedule, and the epoch loop.

Each epoch shuffles and augments from generators seeded by (seed, epoch),
which is what makes a resumed run repeat an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netc.console import say
from netc.errors import ConfigError, UserError
from netc.fileio import write_atomic
from netc.runtime import checkpoint, metrics
from netc.runtime import distributed as distrib
from netc.runtime.batches import check_batch_statistics, epoch_batches, pk_shape, say_left_out
from netc.runtime.config import TASK_METRICS, TrainConfig
from netc.runtime.finetune import load_weights
from netc.runtime.layer_patterns import Freeze
from netc.runtime.losses import build_loss
from netc.runtime.module import build_module
from netc.runtime.optim import build_scheduler, clip_gradients
from netc.runtime.output_losses import OutputLosses, build_output_losses
from netc.runtime.pk_sampler import PK, pk_batches
from netc.runtime.prepare import PreparedRun
from netc.runtime.preprocess import Augment
from netc.runtime.progress import Progress
from netc.runtime.resume import replan, resume_note, schedule_state
from netc.runtime.threads import ThreadChoice, choose_threads, step_timer
from netc.runtime.trained_params import freeze_and_optimizer

EVAL_BATCH = 256
MAX_SKIPPED_STEPS = 10  # consecutive non-finite gradients before training stops


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{config.device}' requested but no CUDA GPU is present")
    return torch.device(config.device)


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext(), None
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast("cuda", dtype=dtype), scaler


def _metric(chosen: str | None, task: str) -> str:
    """The metric that picks best.pt: the task's validation figure (`val_accuracy`,
    `val_mean_iou`), or `loss` (the validation loss, else the training loss)."""
    own = TASK_METRICS[task]
    name = own if chosen is None else chosen.removeprefix("val_")
    if name not in (own, "loss"):
        raise ConfigError(
            "training.metric",
            f"a {task} network is judged by {own} or loss (val_{own} or val_loss)",
            found=f"'{chosen}'",
        )
    return "loss" if name == "loss" else f"val_{name}"


def _first_output(outputs: Any) -> torch.Tensor:
    return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs


def class_scores(scores: torch.Tensor) -> torch.Tensor:
    """Scores whose argmax is the predicted class: one logit (binary_cross_entropy) is
    class 1 where it is positive, so it becomes the two scores (0, logit)."""
    if scores.dim() >= 2 and scores.shape[1] == 1:
        return torch.cat([torch.zeros_like(scores), scores], dim=1)
    return scores


def _train_mode(module: nn.Module) -> None:
    """Training mode, except that frozen batch norms keep their running statistics too
    (eval mode in training)."""
    module.train()
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm) and getattr(
            layer, "netc_frozen", False
        ):
            layer.eval()


def _has_idle_outputs(run: PreparedRun, losses: OutputLosses | None) -> bool:
    """Whether some output's layers get no gradient: DDP must then be told to look for
    parameters a step leaves unused (evaluation-only outputs)."""
    outputs = run.network.graph.outputs
    used = {term.output for term in losses.terms} if losses else set(list(outputs)[:1])
    return len(used) < len(outputs)


def evaluate(
    module: nn.Module, run: PreparedRun, loss_fn, device: torch.device, autocast
) -> dict[str, float]:
    """Validation loss and the task's metric over the whole validation split."""
    module.eval()
    images, targets = run.val_set.images, run.val_set.targets
    if len(images) == 0:
        return {}
    total_loss, correct = 0.0, 0
    classes = len(run.classes)
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(images), EVAL_BATCH):
            x = images[start : start + EVAL_BATCH].to(device)
            y = targets[start : start + EVAL_BATCH].to(device)
            with autocast:
                scores = _first_output(module(x))
            scores = scores.float()
            total_loss += float(loss_fn(scores, y)) * len(x)
            scores = class_scores(scores)
            if run.network.graph.task == "classification":
                correct += metrics.correct_count(scores, y)
            elif run.network.graph.task == "segmentation":
                confusion += metrics.confusion_matrix(scores.cpu(), y.cpu(), classes)
    result = {"val_loss": total_loss / len(images)}
    if run.network.graph.task == "classification":
        result["val_accuracy"] = correct / len(images)
    elif run.network.graph.task == "segmentation":
        result["val_mean_iou"] = metrics.mean_iou(confusion)
    return result


@dataclass
class Session:
    """The state of a run between epochs: module, optimizer, schedule, best so far."""

    run: PreparedRun
    run_dir: Path
    world: distrib.World
    device: torch.device
    module: nn.Module
    trained: nn.Module  # the module, or its DDP wrapper
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    autocast: Any
    scaler: Any
    metric: str
    quiet: bool
    first_epoch: int = 1
    best: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    writer: Any = None
    skipped_steps: int = 0  # optimizer steps skipped in a row for a non-finite gradient
    seconds_before: float = 0.0  # the resumed run's training time so far
    freeze: Freeze | None = None  # layers frozen by training.freeze
    output_losses: OutputLosses | None = None  # training.losses: what trains, when set
    pk: PK | None = None  # P×K batches, when the run uses them

    @classmethod
    def start(
        cls,
        run: PreparedRun,
        run_dir: Path,
        stored: dict[str, Any] | None,
        init_from: str | None,
        lr: float | None,
        quiet: bool,
        weights_layout: str | None = None,
    ) -> Session:
        config, task = run.config, run.network.graph.task
        device = _device(config)
        world = distrib.init_world(device)
        if world.distributed and config.batch_size % world.size:
            raise UserError(
                f"batch size {config.batch_size} does not split evenly over {world.size} processes"
            )
        module = build_module(run.network.graph, seed=config.seed)
        if init_from and stored is None:
            graph = run.network.graph
            report = load_weights(module, graph, init_from, weights_layout, "--init-from")
            for line in report.lines():
                say(f"init-from {init_from}: {line}", quiet or not world.is_main)
        module.to(device)
        if device.type == "cuda":
            # Module.to documents memory_format; its typed overloads leave it out
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        freeze, optimizer = freeze_and_optimizer(module, config, world)
        schedule = build_scheduler(
            optimizer,
            config.schedule,
            epochs=config.epochs,
            steps_per_epoch=len(run.train_set) // config.batch_size,
        )
        check_batch_statistics(module, run, world)
        output_losses = (
            None
            if config.losses is None
            else build_output_losses(
                config.losses,
                config.loss,
                outputs=list(run.network.graph.outputs),
                task=task,
                num_classes=len(run.classes),
            )
        )
        pk = pk_shape(run, quiet or not world.is_main)
        autocast, scaler = _autocast(device, config.precision)
        session = cls(
            run=run,
            run_dir=run_dir,
            world=world,
            device=device,
            module=module,
            trained=(
                torch.nn.parallel.DistributedDataParallel(
                    module, find_unused_parameters=_has_idle_outputs(run, output_losses)
                )
                if world.distributed
                else module
            ),
            loss_fn=build_loss(config.loss, task=task, num_classes=len(run.classes)),
            output_losses=output_losses,
            optimizer=optimizer,
            schedule=schedule,
            autocast=autocast,
            scaler=scaler,
            metric=_metric(config.metric, task),
            quiet=quiet,
            freeze=freeze,
            pk=pk,
        )
        if stored is not None:
            session.restore(stored, lr)
        training = session.first_epoch <= config.epochs  # a finished run resumed: nothing to do
        if training:
            say(session.set_threads().line(), quiet or not world.is_main)
        if world.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(
                    f"cannot make the run directory {run_dir}: {exc.strerror or exc}"
                ) from None
            write_atomic(run_dir / "network.yaml", run.network.graph.source.encode())
            session.writer = _tensorboard(run_dir)
            if training:
                say_left_out(run, quiet)
        return session

    def set_threads(self) -> ThreadChoice:
        """torch's intra-op threads for this run: `training.threads`, else on the CPU the
        faster of one thread and torch's default (see netc.runtime.threads)."""
        config = self.run.config
        if config.threads is not None:
            choice = ThreadChoice(config.threads, "--threads / training.threads")
        elif self.device.type != "cpu":
            return ThreadChoice(torch.get_num_threads(), "torch's default; the GPU trains")
        else:
            batch = config.batch_size // self.world.size
            images, targets = self.run.train_set.images, self.run.train_set.targets
            measure = step_timer(
                self.module, self.loss_fn, images[:batch], targets[:batch], _train_mode
            )
            choice = choose_threads(measure, torch.get_num_threads())
        torch.set_num_threads(choice.threads)
        return choice

    def restore(self, stored: dict[str, Any], lr: float | None) -> None:
        self.module.load_state_dict(stored["model"])
        self.optimizer.load_state_dict(stored["optimizer"])
        count = len(self.run.train_set)
        self.schedule.load_state_dict(schedule_state(stored, count))
        self.history = list(stored["history"])  # checkpoint.load renamed old figures
        self.best, self.best_epoch = stored["best_metric"], stored["best_epoch"]
        self.first_epoch = stored["epoch"] + 1
        if self.history:  # `seconds` counts the whole run's time, not this process's
            self.seconds_before = float(self.history[-1].get("seconds", 0.0))
        if lr is not None:  # an explicit --lr wins over the saved state
            self.schedule.set_base_lr(lr)
        quiet = self.quiet or not self.world.is_main
        say(resume_note(self.run_dir, stored["epoch"], self.run.config.epochs), quiet)
        note = replan(self.schedule, stored, self.run.config, count)
        if note:
            say(note, quiet)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        config, world = self.run.config, self.world
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout: same masks on resume
        generator = torch.Generator().manual_seed(config.seed * 1_000_033 + epoch)
        if self.freeze is not None and self.freeze.epochs is not None:
            self.freeze.apply(epoch)
        _train_mode(self.module)
        images, targets = self.run.train_set.images, self.run.train_set.targets
        balanced = config.balanced_sampling and self.run.network.graph.task == "classification"
        if self.pk is not None:
            batches = pk_batches(targets, self.pk, len(images) // config.batch_size, generator)
        else:
            batches = epoch_batches(
                len(images),
                config.batch_size,
                generator,
                targets if balanced else None,
                config.seed * 1_000_037 + epoch,
            )
        augment = Augment(
            config.augment["crop_padding"],
            config.augment["hflip"],
            config.augment.get("random_resized_crop"),
        )
        progress = Progress(
            len(batches), f"epoch {epoch}/{config.epochs}", enabled=not self.quiet and world.is_main
        )
        # Cosine and warm-up change the lr every batch: the row shows the epoch's first.
        lr = self.schedule.lr()
        figures = metrics.TrainingFigures(self.run.network.graph.task, len(self.run.classes))
        loss_sum, seen = 0.0, 0
        try:
            for step, index in enumerate(batches, 1):
                x, y = augment(images[index], targets[index], generator)
                shard = slice(
                    world.rank * len(x) // world.size, (world.rank + 1) * len(x) // world.size
                )
                loss, scores = self.step(x[shard], y[shard], epoch, step)
                figures.add(class_scores(scores), y[shard].to(scores.device))
                loss_sum += loss * len(x)
                seen += len(x)
                progress.update(step, loss=loss_sum / seen)
        finally:
            progress.close()
        return {"epoch": epoch, "loss": loss_sum / max(seen, 1), **figures.result(), "lr": lr}

    def step(
        self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int
    ) -> tuple[float, torch.Tensor]:
        """One optimizer step on a batch; returns its loss and the scores it came from."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast:
            every = self.trained(x)
        outputs = _first_output(every)
        scores = outputs.detach().float()
        if self.output_losses is not None:
            loss = self.output_losses(every, y)
        else:
            loss = self.loss_fn(outputs.float(), y)
        if distrib.broadcast_flag(self.world, not bool(torch.isfinite(loss))):
            raise self.diverged(float(loss.detach()), epoch, step)
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.run.config.clip_grad_norm
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.module, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            norm = clip_gradients(self.module, clip)  # measured with or without clipping
            if not math.isfinite(norm):
                # DDP has averaged the gradients, so every rank skips this step alike
                self.skipped_steps += 1
                if self.skipped_steps >= MAX_SKIPPED_STEPS:
                    raise self.diverged_gradients(norm, epoch, step)
                return float(loss.detach()), scores
            self.skipped_steps = 0
            self.optimizer.step()
        self.schedule.after_batch()
        return float(loss.detach()), scores

    def diverged_gradients(self, norm: float, epoch: int, step: int) -> TrainingDiverged:
        return self._stopped(
            f"the gradient norm was {norm} for {self.skipped_steps} batches in a row "
            f"(skipped), up to epoch {epoch}, batch {step}",
            "",
        )

    def diverged(self, loss: float, epoch: int, step: int) -> TrainingDiverged:
        return self._stopped(
            f"the loss became {loss} at epoch {epoch}, batch {step}", " or set clip_grad_norm"
        )

    def _stopped(self, what: str, also: str) -> TrainingDiverged:
        last = self.run_dir / "last.pt"
        return TrainingDiverged(
            f"{what}; training stopped\n"
            f"  hint: lower the learning rate (now {self.schedule.lr():.3g}){also}; the last "
            "good checkpoint is " + (str(last) if last.exists() else "(none yet)")
        )

    def compared_metric(self, row: dict[str, Any]) -> str:
        """What picks best.pt: the task's metric when the epoch measured it (higher is
        better), else the validation loss, else, with no validation split, the training
        loss (both lower is better)."""
        if self.metric != "loss" and self.metric in row:
            return self.metric
        return "val_loss" if "val_loss" in row else "loss"

    def end_epoch(self, row: dict[str, Any], started: float) -> None:
        """Schedule, pick the best, write checkpoints and metrics (rank 0), log."""
        if self.world.distributed:  # one set of figures, so every rank's lr stays the same
            keys = sorted(key for key in row if key != "epoch")
            shared = distrib.broadcast_values(self.world, [float(row[key]) for key in keys])
            row.update(zip(keys, shared))
        self.schedule.after_epoch(row.get("val_loss"))
        row["seconds"] = round(self.seconds_before + time.perf_counter() - started, 3)
        name = self.compared_metric(row)
        value = row[name]
        lower_is_better = name in ("loss", "val_loss")
        improved = self.best is None or (
            value < self.best if lower_is_better else value > self.best
        )
        if improved:
            self.best, self.best_epoch = value, row["epoch"]
        self.history.append(row)
        if self.world.is_main:
            state = _state(
                self.run,
                self.module,
                self.optimizer,
                self.schedule,
                row["epoch"],
                self.best,
                self.best_epoch,
                self.history,
            )
            checkpoint.save(self.run_dir / "last.pt", state)
            if improved:
                checkpoint.save(self.run_dir / "best.pt", state)
            _write_metrics(self.run_dir, self.history)
            if self.writer is not None:
                for key, number in row.items():
                    if key != "epoch":
                        self.writer.add_scalar(key, number, row["epoch"])
            say(_epoch_line(row, self.run.config.epochs, improved), self.quiet)
        distrib.barrier(self.world)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        distrib.shutdown(self.world)


def _state(
    run: PreparedRun, module: nn.Module, optimizer, schedule, epoch: int, best, best_epoch, history
) -> dict[str, Any]:
    graph = run.network.graph
    return {
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": schedule.state_dict(),
        "epoch": epoch,
        "best_metric": best,
        "best_epoch": best_epoch,
        "history": list(history),
        "description": graph.source,
        "description_file": graph.file,
        "params": run.params,
        "network": graph.name,
        "task": graph.task,
        "labels": run.classes,
        "preprocessing": run.preprocessing.to_dict(),
        "config": run.config.to_dict(),
    }


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row) + "\n" for row in history)
    write_atomic(run_dir / "metrics.jsonl", text.encode())


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    """The row's figures under their metrics.jsonl names: training, then validation."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    parts += [
        f"{key} {value:.4f}"
        for key, value in row.items()
        if key not in ("epoch", "lr", "seconds") and not key.startswith("val_")
    ]
    parts += [f"{key} {value:.4f}" for key, value in row.items() if key.startswith("val_")]
    parts += [f"lr {row['lr']:.3g}", f"{row['seconds']:.1f}s"]
    return "  ".join(parts) + ("  *" if improved else "")


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))

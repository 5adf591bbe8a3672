"""How many threads torch's CPU ops use while training: measured, unless the user says.

torch defaults to one intra-op thread per core. For a small network that is often
slower than one thread, and on a machine shared with other work it can collapse:
LeNet-5 for 8 epochs took 69 s with torch's two threads on a busy 2-core machine
and 8.6 s with one (same accuracy). So, before the first epoch, a few training
steps on a copy of the module are timed at one thread and at torch's default,
and the faster is kept (one thread on a tie: it leaves the other cores free). As
the server does for onnxruntime (serving/model.py), a step too short to split
runs on one thread without timing the default. `--threads N` (`training.threads`)
skips the measurement.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

SHORT_STEP_S = 0.002  # a step on one thread shorter than this is not worth splitting
FASTER_BY = 0.8  # more threads must cut the step to at most this share of one thread's
MEASURE_BUDGET_S = 2.0  # after the first pair of timings, more rounds only within this
ROUNDS = 3  # timings per thread count at most (their median is compared)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # why, for the training output

    def line(self) -> str:
        plural = "s" if self.threads > 1 else ""
        return f"note: training on {self.threads} CPU thread{plural} ({self.reason})"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def choose_threads(measure: Callable[[int], float], default: int) -> ThreadChoice:
    """The faster of one thread and torch's `default`, by `measure(threads)`: the seconds
    one training step takes on that many threads."""
    if default <= 1:
        return ThreadChoice(1, "torch's default here; --threads N for more")
    one = [measure(1)]
    if one[0] < SHORT_STEP_S:
        return ThreadChoice(1, f"a step takes {_ms(one[0])}, too short to split; --threads N")
    many = [measure(default)]
    while len(one) < ROUNDS and sum(one) + sum(many) < MEASURE_BUDGET_S:
        one.append(measure(1))
        many.append(measure(default))
    single, multi = statistics.median(one), statistics.median(many)
    threads = default if multi <= FASTER_BY * single else 1
    return ThreadChoice(
        threads,
        f"a step took {_ms(single)} on 1 thread and {_ms(multi)} on {default}; --threads N",
    )


def step_timer(
    module: nn.Module,
    loss_fn: Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    train_mode: Callable[[nn.Module], None],
) -> Callable[[int], float]:
    """`measure` for `choose_threads`: forward and backward of a copy of `module` on one
    batch, so the run's weights, statistics and gradients stay as they were; `train_mode`
    puts the copy in the mode training uses. One untimed step first pays for lazy
    initialisation (allocations, kernel selection)."""
    probe = copy.deepcopy(module)
    train_mode(probe)

    def run() -> None:
        outputs = probe(x)
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        loss_fn(outputs.float(), y).backward()
        probe.zero_grad(set_to_none=True)

    run()

    def measure(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return measure

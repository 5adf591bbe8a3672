"""Per-model counters in Triton's terms (ModelStatistics and the Prometheus metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class ModelStats:
    inference_count: int = 0  # samples inferred (a batch of 8 counts 8)
    execution_count: int = 0  # model runs (a batch of 8 counts 1)
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    last_inference_ms: int = 0
    batch_sizes: dict[int, Duration] = field(default_factory=dict)  # size → executions

    def executed(self, samples: int, ns: int, requests: int = 1) -> None:
        """One model run over a batch of `samples` from `requests` requests, taking `ns`.
        As in Triton, `compute_infer` counts requests (each spent the run's time) and
        `batch_sizes` counts runs."""
        self.execution_count += 1
        self.inference_count += samples
        self.compute_infer.add(ns * requests, requests)
        self.batch_sizes.setdefault(samples, Duration()).add(ns)
        self.last_inference_ms = int(time.time() * 1000)

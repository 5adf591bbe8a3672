"""Per-model counters in Triton's terms: ModelStatistics and the Prometheus metrics read them.

A request's times are recorded in one step, when its outcome is known
(`ModelStats.succeeded` or `failed`), as Triton records them: success, queue and
the three compute durations then always have equal counts, at any moment a client
reads them. Triton's perf_analyzer subtracts two readings and refuses to go on if
compute_input, compute_infer and compute_output counts differ.

Whoever holds a request's `RequestTimes` records its outcome: the gRPC service for
its requests (input is decoding the request, output encoding the answer), the
batcher for a request queued without one (the vision service's, a test's direct
call), whose input and output times are then zero.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from dataclasses import dataclass, field

from netc.serving import events

# Histogram buckets (`le`, in ns): 0.05 ms to 10 s in 1-2.5-5 steps; +Inf is implicit.
DURATION_BOUNDS_NS = (
    *(50_000, 100_000, 250_000, 500_000),  # 0.05 to 0.5 ms
    *(1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000),  # 1 to 50 ms
    *(100_000_000, 250_000_000, 500_000_000),  # 0.1 to 0.5 s
    *(1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000),  # 1 to 10 s
)
BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


class Histogram:
    """Observations counted into fixed buckets (`le` bounds, as Prometheus has them);
    no lock: it is only written from the event loop."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[int, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.total = 0

    def observe(self, value: int) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[int]:
        """Each bucket's count of observations at or below its bound, then the total
        count (+Inf)."""
        counts, running, out = list(self.counts), 0, []
        for count in counts:
            running += count
            out.append(running)
        return out


class RequestTimes:
    """One request's moments (`time.perf_counter_ns`), filled in as it goes: `start`
    when the service received it, `queued` when it joined the batcher's queue (its
    input decoded and checked), `ran` when its answer's encoding began (the batcher
    sets it to the batch's end; a service sets it again when its handler resumes, so
    the event loop's delay in between is nobody's compute time); the batcher sets
    `queue_ns` and `infer_ns`."""

    __slots__ = ("done", "infer_ns", "queue_ns", "queued", "ran", "start")

    def __init__(self, start: int) -> None:
        self.start = self.queued = self.ran = start
        self.queue_ns = self.infer_ns = 0
        self.done = False


@dataclass
class ModelStats:
    name: str = ""
    version: str = ""
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
    failures: dict[str, int] = field(default_factory=dict)  # gRPC status name → requests
    in_flight: int = 0  # requests received and not yet answered
    request_histogram: Histogram = field(default_factory=lambda: Histogram(DURATION_BOUNDS_NS))
    queue_histogram: Histogram = field(default_factory=lambda: Histogram(DURATION_BOUNDS_NS))
    compute_histogram: Histogram = field(default_factory=lambda: Histogram(DURATION_BOUNDS_NS))
    batch_histogram: Histogram = field(default_factory=lambda: Histogram(BATCH_BOUNDS))

    def begin(self, start: int | None = None) -> RequestTimes:
        """A request for this model version arrived (at `start`, else now)."""
        self.in_flight += 1
        return RequestTimes(time.perf_counter_ns() if start is None else start)

    def executed(self, samples: int, ns: int) -> None:
        """One model run over a batch of `samples`, taking `ns`. As in Triton,
        `batch_sizes` counts runs; each request's share is recorded by `succeeded`."""
        self.execution_count += 1
        self.inference_count += samples
        self.batch_sizes.setdefault(samples, Duration()).add(ns)
        self.compute_histogram.observe(ns)
        self.batch_histogram.observe(samples)

    def succeeded(self, times: RequestTimes, end: int | None = None) -> None:
        """The request was answered (at `end`, else now): every duration at once."""
        if times.done:
            return
        times.done = True
        end = time.perf_counter_ns() if end is None else end
        self.in_flight -= 1
        total = end - times.start
        self.success.add(total)
        self.queue.add(times.queue_ns)
        self.compute_input.add(times.queued - times.start)
        self.compute_infer.add(times.infer_ns)
        self.compute_output.add(end - times.ran)
        self.request_histogram.observe(total)
        self.queue_histogram.observe(times.queue_ns)
        self.last_inference_ms = int(time.time() * 1000)
        if events.requests_logged():
            events.log_request(self.name, self.version, "OK", total, times.queue_ns, times.infer_ns)

    def failed(self, times: RequestTimes, code: str, end: int | None = None) -> None:
        """The request failed with gRPC status `code` (its name, "RESOURCE_EXHAUSTED")."""
        if times.done:
            return
        times.done = True
        end = time.perf_counter_ns() if end is None else end
        self.in_flight -= 1
        self.fail.add(end - times.start)
        self.failures[code] = self.failures.get(code, 0) + 1
        if events.requests_logged():
            events.log_request(self.name, self.version, code, end - times.start)

"""Dynamic batching: gather requests of one shape, run them as one batch, split back.

Each of the model's `instances` workers takes the oldest live request and every
queued request with the same shape key (the non-batch dims and dtypes of
every input, so fully convolutional requests of different sizes never mix), up
to `max_batch`. If the batch is short it waits up to `max_delay` for more,
dispatching early on reaching `max_batch` or a preferred size. With a delay
of 0 a worker takes what has queued while it was busy: no added latency when
idle, larger batches under load.

The queue is bounded: a request beyond `max_queue` fails at once with
RESOURCE_EXHAUSTED. A request whose client went away (its task was cancelled)
or whose deadline passed is dropped before it runs.

Runs normally happen on a worker thread, so the event loop keeps accepting
requests. A model whose runs take less than `INLINE_NS` (a LeNet takes ~50 µs)
runs on the event loop itself: the thread hand-off would cost more than the run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from netc.serving.errors import DeadlineExceeded, QueueFull
from netc.serving.stats import ModelStats

Tensors = dict[str, np.ndarray]
INLINE_NS = 200_000  # runs faster than this skip the worker thread


@dataclass(eq=False)  # identity, not field equality: the queue holds arrays
class _Pending:
    inputs: Tensors
    batch: int
    key: tuple
    future: asyncio.Future
    deadline: float | None
    enqueued_ns: int = field(default_factory=time.perf_counter_ns)

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now > self.deadline)


class Batcher:
    def __init__(
        self,
        name: str,
        run: Callable[[Tensors], Tensors],
        *,
        batching: bool,
        max_batch: int,
        max_delay_s: float,
        preferred: tuple[int, ...],
        max_queue: int,
        instances: int,
        stats: ModelStats,
    ) -> None:
        self.name, self.run, self.batching = name, run, batching
        self.max_batch = max(1, max_batch)
        self.max_delay_s, self.preferred = max_delay_s, set(preferred)
        self.max_queue, self.stats = max_queue, stats
        self.queue: deque[_Pending] = deque()
        self.arrived = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"netc-{name}")
        self.workers = [asyncio.create_task(self._work()) for _ in range(instances)]
        self.typical_ns: float | None = None  # moving average of run time per sample

    async def submit(
        self, inputs: Tensors, batch: int, key: tuple, deadline: float | None
    ) -> Tensors:
        if len(self.queue) >= self.max_queue:
            raise QueueFull(
                f"model '{self.name}': queue is full ({self.max_queue} requests "
                "waiting); retry later"
            )
        pending = _Pending(inputs, batch, key, asyncio.get_running_loop().create_future(), deadline)
        self.queue.append(pending)
        self.arrived.set()
        return await pending.future  # cancelled with the client's call: the worker skips it

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for pending in self.queue:
            if not pending.future.done():
                pending.future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _live(self) -> _Pending | None:
        """Drop dead requests from the front; the oldest live one, or None."""
        now = asyncio.get_running_loop().time()
        while self.queue and self.queue[0].dead(now):
            pending = self.queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(
                    DeadlineExceeded(
                        f"model '{self.name}': the request's deadline passed while it was queued"
                    )
                )
        return self.queue[0] if self.queue else None

    def _group(self, first: _Pending) -> tuple[list[_Pending], int]:
        if not self.batching:
            return [first], first.batch
        group, size = [], 0
        for pending in self.queue:
            if (
                pending.key == first.key
                and size + pending.batch <= self.max_batch
                and not pending.future.done()
            ):
                group.append(pending)
                size += pending.batch
        return group, size

    async def _next_batch(self) -> list[_Pending]:
        while (first := self._live()) is None:
            self.arrived.clear()
            await self.arrived.wait()
        group, size = self._group(first)
        loop = asyncio.get_running_loop()
        until = loop.time() + self.max_delay_s
        while self.batching and size < self.max_batch and size not in self.preferred:
            remaining = until - loop.time()
            if remaining <= 0:
                break
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                break
            group, size = self._group(first)
        for pending in group:
            self.queue.remove(pending)
        return group

    async def _work(self) -> None:
        """A worker must outlive any one bad batch: errors go to that batch's callers."""
        while True:
            try:
                await self._work_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged; the worker keeps serving
                logging.getLogger("netc.serving").exception("batcher %s: worker error", self.name)

    async def _work_once(self) -> None:
        """Take one batch, run it in a worker thread, hand each caller its slice."""
        loop = asyncio.get_running_loop()
        group = await self._next_batch()
        group = [p for p in group if not p.future.done()]
        if not group:
            return
        start = time.perf_counter_ns()
        for pending in group:
            self.stats.queue.add(start - pending.enqueued_ns)
        try:
            expected_ns = (self.typical_ns or INLINE_NS) * sum(p.batch for p in group)
            if expected_ns < INLINE_NS:
                results, compute_ns = self._execute(group)
            else:
                results, compute_ns = await loop.run_in_executor(
                    self.executor, self._execute, group
                )
        except Exception as exc:  # the error goes to every waiting caller
            end = time.perf_counter_ns()
            for pending in group:
                self.stats.fail.add(end - pending.enqueued_ns)
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        end = time.perf_counter_ns()
        samples = sum(p.batch for p in group)
        self.stats.executed(samples, compute_ns)
        per_sample = compute_ns / samples
        self.typical_ns = (
            per_sample if self.typical_ns is None else (0.9 * self.typical_ns + 0.1 * per_sample)
        )
        for pending, result in zip(group, results):
            self.stats.success.add(end - pending.enqueued_ns)
            if not pending.future.done():
                pending.future.set_result(result)

    def _execute(self, group: list[_Pending]) -> tuple[list[Tensors], int]:
        """Runs in a worker thread: concatenate, run, split; returns results and run time."""
        start = time.perf_counter_ns()
        if len(group) == 1:
            merged = group[0].inputs
        else:
            merged = {
                name: np.concatenate([p.inputs[name] for p in group]) for name in group[0].inputs
            }
        outputs = self.run(merged)
        elapsed = time.perf_counter_ns() - start
        if len(group) == 1:
            return [outputs], elapsed
        bounds = np.cumsum([p.batch for p in group])[:-1]
        pieces = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: pieces[name][i] for name in outputs} for i in range(len(group))], elapsed

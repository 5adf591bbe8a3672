"""Dynamic batching: gather requests of one shape, run them as one batch, split back.

Each of the model's `instances` workers takes the oldest live request and every
queued request with the same shape key (the non-batch dims and dtypes of
every input, so fully convolutional requests of different sizes never mix), up
to `max_batch`. A short batch may then wait for company, dispatching early on
reaching `max_batch` or a preferred size:
- a fixed `max_delay` (the model's `max_queue_delay_us`) waits that long;
  0 never waits and batches only what queued while the model was busy;
- `None` (`auto`, the default) waits only while clients are sending
  concurrently, i.e. a request recently arrived to find others still queued.
  It then waits as long as the recent arrival rate needs to fill the batch,
  at most `AUTO_MAX_DELAY_S`, and stops waiting after two waits that brought
  nobody. A lone client never waits, so batching costs it no latency; 16
  concurrent clients of a LeNet get batches of about 10 instead of 1, which
  on the 2-core bench machine raises throughput by ~40 % (bench/serve.py).

The queue is bounded: a request beyond `max_queue` fails at once with
RESOURCE_EXHAUSTED. A request whose client went away (its task was cancelled)
or whose deadline passed is dropped before it runs.

Runs normally happen on a worker thread, so the event loop keeps accepting
requests. A batch expected to take less than `INLINE_NS` runs on the event
loop itself: the thread hand-off (and the GIL traffic it brings) would cost
more than the run.
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
INLINE_NS = 1_000_000  # batches expected to run faster than this skip the worker thread
AUTO_MAX_DELAY_S = 0.001  # the longest `auto` makes a request wait for company
IDLE_GAP_S = 0.01  # a gap between arrivals longer than this is idleness, not load


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
        max_delay_s: float | None,
        preferred: tuple[int, ...],
        max_queue: int,
        instances: int,
        stats: ModelStats,
    ) -> None:
        """`max_delay_s`: how long a short batch waits for company; None: `auto`."""
        self.name, self.run, self.batching = name, run, batching
        self.max_batch = max(1, max_batch)
        self.max_delay_s, self.preferred = max_delay_s, set(preferred)
        self.max_queue, self.stats = max_queue, stats
        self.queue: deque[_Pending] = deque()
        self.waiters: list[asyncio.Future] = []  # workers waiting for an arrival
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"netc-{name}")
        self.workers = [asyncio.create_task(self._work()) for _ in range(instances)]
        self.typical_ns: float | None = None  # moving average of run time per sample
        # what `auto` learns from arrivals: are clients concurrent, how far apart they come
        self.concurrent = False
        self.fruitless_waits = 0
        self.gathering = 0  # workers holding a short batch while it waits for company
        self.running = 0  # batches on a worker thread now
        self.gap_s = IDLE_GAP_S
        self.last_arrival: float | None = None

    async def submit(
        self, inputs: Tensors, batch: int, key: tuple, deadline: float | None
    ) -> Tensors:
        if len(self.queue) >= self.max_queue:
            raise QueueFull(
                f"model '{self.name}': queue is full ({self.max_queue} requests "
                "waiting); retry later"
            )
        loop = asyncio.get_running_loop()
        self._arrived(loop.time())
        pending = _Pending(inputs, batch, key, loop.create_future(), deadline)
        self.queue.append(pending)
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()
        return await pending.future  # cancelled with the client's call: the worker skips it

    def _arrived(self, now: float) -> None:
        """Learn the arrival pattern `auto` batching decides by."""
        if self.queue or self.gathering or self.running:  # clients are sending concurrently
            self.concurrent, self.fruitless_waits = True, 0
        if self.last_arrival is not None:
            gap = min(now - self.last_arrival, IDLE_GAP_S)
            self.gap_s = 0.8 * self.gap_s + 0.2 * gap
        self.last_arrival = now

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        for pending in self.queue:
            if not pending.future.done():
                pending.future.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def _arrival(self, timeout: float | None) -> None:
        """Sleep until the next request arrives, or `timeout` seconds pass."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self.waiters:
                self.waiters.remove(waiter)

    def _patience(self, size: int) -> float:
        """How long a batch of `size` may wait for company."""
        if not self.batching or size >= self.max_batch or size in self.preferred:
            return 0.0
        if self.max_delay_s is not None:
            return self.max_delay_s
        if not self.concurrent:
            return 0.0
        return min(AUTO_MAX_DELAY_S, (self.max_batch - size) * self.gap_s)

    def _live(self) -> _Pending | None:
        """Drop dead requests from the front; the oldest live one, or None."""
        now = asyncio.get_running_loop().time()
        while self.queue and self.queue[0].dead(now):
            self._expire(self.queue.popleft())
        return self.queue[0] if self.queue else None

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():
            pending.future.set_exception(
                DeadlineExceeded(
                    f"model '{self.name}': the request's deadline passed while it was queued"
                )
            )

    def _take(self, first: _Pending, group: list[_Pending], size: int) -> int:
        """Move queued requests that batch with `first` into `group`; returns its size.
        Taken requests leave the queue, so no other worker can take them too."""
        if not self.batching:
            self.queue.remove(first)
            group.append(first)
            return first.batch
        taken = []
        for pending in self.queue:
            if (
                pending.key == first.key
                and size + pending.batch <= self.max_batch
                and not pending.future.done()
            ):
                taken.append(pending)
                size += pending.batch
        for pending in taken:
            self.queue.remove(pending)
        group += taken
        return size

    async def _next_batch(self) -> list[_Pending]:
        while (first := self._live()) is None:
            await self._arrival(None)
        group: list[_Pending] = []
        size = self._take(first, group, 0)
        patience = self._patience(size)
        if patience > 0:
            loop = asyncio.get_running_loop()
            alone, until = size, loop.time() + patience
            self.gathering += 1
            try:
                while size < self.max_batch and size not in self.preferred:
                    remaining = until - loop.time()
                    if remaining <= 0:
                        break
                    await self._arrival(remaining)
                    size = self._take(first, group, size)
            except asyncio.CancelledError:
                self.queue.extendleft(reversed(group))  # back in line for close()
                raise
            finally:
                self.gathering -= 1
            if self.max_delay_s is None and size == alone:
                self.fruitless_waits += 1
                if self.fruitless_waits >= 2:  # the concurrent clients have gone
                    self.concurrent = False
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
        now = loop.time()
        for pending in group:
            if pending.dead(now):  # cancelled, or its deadline passed while the batch formed
                self._expire(pending)
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
                self.running += 1
                try:
                    results, compute_ns = await loop.run_in_executor(
                        self.executor, self._execute, group
                    )
                finally:
                    self.running -= 1
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


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)

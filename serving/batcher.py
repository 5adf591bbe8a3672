"""Dynamic batching: gather requests of one shape, run them as one batch, split back.

This module is the mechanism: a queue, the workers that take batches from it, and
closing. What it decides by lives elsewhere: how long a short batch waits for company
and whether a batch runs on the event loop (serving/batching_policy.py), how
requests' tensors merge and split (serving/batching_tensors.py).

1. submit: a request joins the queue, or fails at once with RESOURCE_EXHAUSTED when
   `max_queue` requests (queued, or held by a gathering batch) or `MAX_QUEUE_BYTES`
   of inputs already wait. Requests whose clients went away (cancelled) or whose
   deadline passed are dropped before they run, and never count toward a full queue.
2. gather: each of the model's `instances` workers takes the oldest live request and
   every queued one with the same shape key (the non-batch dims and dtypes of every
   input, so fully convolutional requests of different sizes never mix), up to
   `max_batch` samples and `MAX_BATCH_BYTES` of inputs. A short batch then waits as
   long as the model's `Patience` allows, dispatching early once arrivals complete it.
3. run: the batch runs on the event loop or on a worker thread, as `RunCost` says.
4. answer: each caller gets its rows of the outputs; an error goes to every caller of
   the batch, and a worker outlives it.
5. close (a reload, an unload, shutdown): queued and running requests may finish for
   up to `DRAIN_S`; whatever is left answers UNAVAILABLE: no caller is left waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NoReturn

from netc.serving.batching_policy import RefusalPace, RunCost, patience_for
from netc.serving.batching_tensors import Tensors, array_nbytes, merge, split
from netc.serving.errors import (
    DeadlineExceeded,
    ModelUnavailable,
    QueueFull,
    ServingError,
    status_of,
)
from netc.serving.stats import ModelStats, RequestTimes

# Memory bounds besides the request count: a batch stops growing at MAX_BATCH_BYTES of
# inputs (a model may need ten times its input while it runs), and the queue refuses a
# request once it holds MAX_QUEUE_BYTES (256 requests of 128 MiB would be 32 GiB).
MAX_BATCH_BYTES = 256 * 2**20
MAX_QUEUE_BYTES = 2 * 2**30
DRAIN_S = 5.0  # how long close() lets queued and running requests finish


class _Pending:
    """One queued request. Compared by identity: the queue holds arrays. `owned`: the
    batcher records the request's outcome in the model's stats (the caller gave no
    `RequestTimes`; serving/stats.py)."""

    __slots__ = ("batch", "deadline", "future", "inputs", "key", "nbytes", "owned", "times")

    def __init__(
        self,
        inputs: Tensors,
        batch: int,
        key: tuple,
        future: asyncio.Future,
        deadline,
        times: RequestTimes,
        owned: bool,
    ) -> None:
        self.inputs, self.batch, self.key = inputs, batch, key
        self.future, self.deadline = future, deadline
        self.times, self.owned = times, owned
        times.queued = time.perf_counter_ns()
        self.nbytes = sum(map(array_nbytes, inputs.values()))

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now > self.deadline)


class _Gathering:
    """A worker holding a short batch while it waits for company. Arrivals of its key
    are counted as they come, and the worker is woken only once they could complete the
    batch (or at its deadline): one wake-up per batch, not one per arrival."""

    __slots__ = ("group", "key", "requests", "size", "waiter")

    def __init__(
        self, key: tuple, group: list[_Pending], size: int, waiter: asyncio.Future
    ) -> None:
        self.key, self.group, self.size, self.waiter = key, group, size, waiter
        self.requests = len(group)  # the group's requests and those arrived since


class Batcher:
    """The queue of one model version and the workers that run it in batches."""

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
        refusals_per_second: int = 0,
    ) -> None:
        """`max_delay_s`: how long a short batch waits for company; None: `auto`."""
        self.name, self.run, self.batching = name, run, batching
        self.max_queue, self.stats = max_queue, stats
        self.patience = patience_for(batching, max(1, max_batch), preferred, max_delay_s)
        self.cost = RunCost()
        self.refusals = RefusalPace(refusals_per_second)
        self.queue: deque[_Pending] = deque()
        self.queued_bytes = 0  # inputs held by `queue`: kept in step wherever it changes
        self.idle: list[asyncio.Future] = []  # workers waiting for any request
        self.gatherings: list[_Gathering] = []
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"netc-{name}")
        self.workers = [asyncio.create_task(self._work()) for _ in range(instances)]
        self.taken: list[list[_Pending]] = []  # groups workers hold: gathering or running
        self.closing = False

    # 1. submit

    def submit(
        self,
        inputs: Tensors,
        batch: int,
        key: tuple,
        deadline: float | None,
        times: RequestTimes | None = None,
    ) -> asyncio.Future:
        """Queue a request; await the returned future for its outputs. Cancelling the future
        (as gRPC does when the client goes away) takes the request out of its batch.
        With `times`, the batcher fills in its queue and run times and the caller records
        the outcome; without, the batcher records it (serving/stats.py), a refusal too."""
        if times is not None:
            return self._enqueue(inputs, batch, key, deadline, times, False)
        times = self.stats.begin()
        try:
            return self._enqueue(inputs, batch, key, deadline, times, True)
        except ServingError as exc:
            self.stats.failed(times, status_of(exc).name)
            raise

    def _enqueue(
        self,
        inputs: Tensors,
        batch: int,
        key: tuple,
        deadline: float | None,
        times: RequestTimes,
        owned: bool,
    ) -> asyncio.Future:
        self.admit()
        loop = asyncio.get_running_loop()
        self.patience.arrived(loop.time(), len(self.queue) + sum(map(len, self.taken)))
        pending = _Pending(inputs, batch, key, loop.create_future(), deadline, times, owned)
        if self.queue and self.queued_bytes + pending.nbytes > MAX_QUEUE_BYTES:
            raise QueueFull(
                f"model '{self.name}': the queue holds {self.queued_bytes / 2**20:.0f} MiB "
                f"of inputs, and this request's {pending.nbytes / 2**20:.0f} MiB would pass "
                f"{MAX_QUEUE_BYTES / 2**20:.0f} MiB; retry later"
            )
        self.queue.append(pending)
        self.queued_bytes += pending.nbytes
        if self.idle:
            for waiter in self.idle:
                _wake(waiter)
            self.idle.clear()
        for gathering in self.gatherings:
            if gathering.key == key:
                gathering.size += batch
                gathering.requests += 1
                if self.patience.complete(gathering.size) or self.patience.everyone_in(
                    gathering.requests
                ):
                    _wake(gathering.waiter)
        return pending.future

    def admit(self) -> None:
        """Raise what `submit` would refuse a request with now (the model is closing, or
        its queue is full), so a caller can refuse before decoding the request: under a
        storm of retries every refusal's cost comes out of the model's share of the CPU."""
        if self.closing:
            raise ModelUnavailable(f"model '{self.name}' is being unloaded; retry")
        if self.waiting() >= self.max_queue:
            # requests whose clients left must not keep others out
            self._prune(asyncio.get_running_loop().time())
            if self.waiting() >= self.max_queue:
                raise QueueFull(
                    f"model '{self.name}': queue is full ({self.max_queue} requests "
                    "waiting); retry later"
                )

    async def paced(self, refusal: Exception) -> NoReturn:
        """Raise `refusal` (`admit`'s) once its turn comes (`RefusalPace`)."""
        delay = self.refusals.delay(asyncio.get_running_loop().time())
        if delay > 0:
            self.refusals.held += 1
            try:
                await asyncio.sleep(delay)
            finally:
                self.refusals.held -= 1
        raise refusal

    def waiting(self) -> int:
        """Requests waiting to run: queued, or held by a batch gathering company."""
        return len(self.queue) + sum(len(g.group) for g in self.gatherings)

    def _prune(self, now: float) -> None:
        """Take every dead request (cancelled, or past its deadline) out of the queue."""
        dead = [p for p in self.queue if p.dead(now)]
        for pending in dead:
            self._dequeue(pending)
            self._expire(pending)

    def _dequeue(self, pending: _Pending) -> None:
        self.queue.remove(pending)
        self.queued_bytes -= pending.nbytes

    def _expire(self, pending: _Pending) -> None:
        """Answer a dead request: cancelled by its client, or past its deadline."""
        _settle(
            [pending],
            DeadlineExceeded(
                f"model '{self.name}': the request's deadline passed while it was queued"
            ),
            self.stats,
        )

    # a worker: 2, 3, 4 over and over

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
        """Take one batch and answer every request in it."""
        group = await self._next_batch()
        try:
            await self._answer(group)
        except asyncio.CancelledError:
            raise  # close() answers whatever this worker held
        except BaseException as exc:  # a bug of ours: answer rather than leave callers waiting
            _settle(group, exc, self.stats)
            self._release(group)
            raise
        self._release(group)

    # 2. gather

    async def _next_batch(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        while (first := self._live()) is None:
            waiter = loop.create_future()
            self.idle.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self.idle:
                    self.idle.remove(waiter)
        group: list[_Pending] = []
        self.taken.append(group)  # until _work_once has answered it
        size = self._take(first, group, 0)
        wait_s = 0.0 if self.patience.everyone_in(len(group)) else self.patience.wait_s(size)
        if wait_s > 0:
            await self._gather(first, group, size, wait_s)
        return group

    def _live(self) -> _Pending | None:
        """Drop dead requests from the front; the oldest live one, or None."""
        now = asyncio.get_running_loop().time()
        while self.queue and self.queue[0].dead(now):
            pending = self.queue.popleft()
            self.queued_bytes -= pending.nbytes
            self._expire(pending)
        return self.queue[0] if self.queue else None

    def _take(self, first: _Pending, group: list[_Pending], size: int) -> int:
        """Move queued requests that batch with `first` into `group`; returns its size.
        Taken requests leave the queue, so no other worker can take them too."""
        if not self.batching:
            self._dequeue(first)
            group.append(first)
            return first.batch
        taken: list[_Pending] = []
        nbytes = sum(p.nbytes for p in group)
        max_batch = self.patience.max_batch
        for pending in self.queue:
            if (
                pending.key == first.key
                and size + pending.batch <= max_batch
                and ((not group and not taken) or nbytes + pending.nbytes <= MAX_BATCH_BYTES)
                and not pending.future.done()
            ):
                taken.append(pending)
                size += pending.batch
                nbytes += pending.nbytes
        for pending in taken:
            self._dequeue(pending)
        group += taken
        return size

    async def _gather(
        self, first: _Pending, group: list[_Pending], size: int, wait_s: float
    ) -> None:
        """Hold the short batch `group` until arrivals complete it or `wait_s` runs out."""
        loop = asyncio.get_running_loop()
        gathering = _Gathering(first.key, group, size, loop.create_future())
        self.gatherings.append(gathering)
        timer = loop.call_later(wait_s, _wake, gathering.waiter)
        try:
            await gathering.waiter
        finally:
            timer.cancel()
            self.gatherings.remove(gathering)
        self.patience.gathered(self._take(first, group, size) > size)

    # 3, 4. run and answer

    async def _answer(self, group: list[_Pending]) -> None:
        """Run the batch (inline or on a worker thread), hand each caller its rows."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pending in group:
            if pending.dead(now):  # cancelled, or its deadline passed while the batch formed
                self._expire(pending)
        group = [p for p in group if not p.future.done()]
        if not group:
            return
        start = time.perf_counter_ns()
        elements = sum(array.size for p in group for array in p.inputs.values())
        for pending in group:
            pending.times.queue_ns = start - pending.times.queued
        try:
            if self.cost.inline(elements):
                results, compute_ns = self._execute(group)
            else:
                results, compute_ns = await loop.run_in_executor(
                    self.executor, self._execute, group
                )
        except Exception as exc:  # the error goes to every waiting caller
            _settle(group, exc, self.stats)
            return
        end = time.perf_counter_ns()
        self.stats.executed(sum(p.batch for p in group), compute_ns)
        self.cost.observe(elements, compute_ns)
        for pending, result in zip(group, results):
            times = pending.times
            times.infer_ns, times.ran = compute_ns, end
            if pending.future.done():  # its client went away while the batch ran
                if pending.owned:
                    self.stats.failed(times, "CANCELLED")
                continue
            pending.future.set_result(result)
            if pending.owned:
                self.stats.succeeded(times, end)

    def _execute(self, group: list[_Pending]) -> tuple[list[Tensors], int]:
        """Merge, run, split; returns each caller's outputs and the run time (merge
        included, as a request's compute time)."""
        start = time.perf_counter_ns()
        if len(group) == 1:  # what a lone client always sends: nothing to merge or split
            return [self.run(group[0].inputs)], time.perf_counter_ns() - start
        outputs = self.run(merge([p.inputs for p in group]))
        elapsed = time.perf_counter_ns() - start
        return split(outputs, [p.batch for p in group]), elapsed

    def _release(self, group: list[_Pending]) -> None:
        self.taken = [g for g in self.taken if g is not group]

    # 5. close

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Let queued and running requests finish (up to `drain_s`), then stop the
        workers; whatever is left answers UNAVAILABLE. Never leaves a caller waiting."""
        self.closing = True
        loop = asyncio.get_running_loop()
        until = loop.time() + drain_s
        while (self.queue or self.taken) and loop.time() < until:
            await asyncio.sleep(0.005)
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        left = [*self.queue, *(p for group in self.taken for p in group)]
        self.queue.clear()
        self.queued_bytes = 0
        self.taken.clear()
        _settle(
            left,
            ModelUnavailable(f"model '{self.name}' was unloaded before the request ran"),
            self.stats,
        )
        self.executor.shutdown(wait=False, cancel_futures=True)


def _settle(group: list[_Pending], exc: BaseException, stats: ModelStats) -> None:
    """Answer every caller in `group` still waiting with `exc`, and record the failures
    the batcher owns (a request its client cancelled as CANCELLED)."""
    for pending in group:
        future = pending.future
        if not future.done():
            future.set_exception(exc)
            code = status_of(exc).name
        elif future.cancelled():
            code = "CANCELLED"
        else:  # answered already
            continue
        if pending.owned:
            stats.failed(pending.times, code)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)

"""Dynamic batching: gather requests of one shape, run them as one batch, split back.

Each of the model's `instances` workers takes the oldest live request and every
queued request with the same shape key (the non-batch dims and dtypes of
every input, so fully convolutional requests of different sizes never mix), up
to `max_batch`. A short batch may then wait for company, dispatching early on
reaching `max_batch` or a preferred size:
- a fixed `max_delay` (the model's `max_queue_delay_us`) waits that long;
  0 never waits and batches only what queued while the model was busy;
- `None` (`auto`, the default) waits only while clients are sending
  concurrently, i.e. a request recently arrived while others were queued,
  gathering or running.
  It then waits as long as the recent arrival rate needs to fill the batch,
  at most `AUTO_MAX_DELAY_S`, and stops waiting after two waits that brought
  nobody. A lone client never waits, so batching costs it no latency; 16
  concurrent clients of a LeNet get batches of about 10 instead of 1, which
  on the 2-core bench machine raises throughput by ~40 % (bench/serve.py).

The queue is bounded: a request beyond `max_queue` (queued or held by a
gathering batch) fails at once with RESOURCE_EXHAUSTED. A request whose client
went away (its task was cancelled) or whose deadline passed is dropped before
it runs, and never counts toward a full queue.

Closing (a reload, an unload, shutdown) lets queued and running requests
finish for up to `DRAIN_S`, then answers whatever is left UNAVAILABLE: no
caller is ever left waiting.

Runs normally happen on a worker thread, so the event loop keeps accepting
requests. A batch expected to take less than `INLINE_NS` runs on the event
loop itself: the thread hand-off (and the GIL traffic it brings) would cost
more than the run (LeNet batches at 16 clients: 6,250 req/s inline, 5,200 on
the worker thread). The expectation scales with the batch's input elements,
not its sample count: for a fully convolutional model, a 2000x2000 picture
after many 4x4 ones must not run on the loop (it held every other call for
0.5 s before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from netc.serving.errors import DeadlineExceeded, ModelUnavailable, QueueFull
from netc.serving.stats import ModelStats

Tensors = dict[str, np.ndarray]
INLINE_NS = 1_000_000  # batches expected to run faster than this skip the worker thread
# Memory bounds besides the request count: a batch stops growing at MAX_BATCH_BYTES of
# inputs (a model may need ten times its input while it runs), and the queue refuses a
# request once it holds MAX_QUEUE_BYTES (256 requests of 128 MiB would be 32 GiB).
MAX_BATCH_BYTES = 256 * 2**20
MAX_QUEUE_BYTES = 2 * 2**30
AUTO_MAX_DELAY_S = 0.001  # the longest `auto` makes a request wait for company
IDLE_GAP_S = 0.01  # a gap between arrivals longer than this is idleness, not load
DRAIN_S = 5.0  # how long close() lets queued and running requests finish


class _Pending:
    """One queued request. Compared by identity: the queue holds arrays."""

    __slots__ = ("batch", "deadline", "enqueued_ns", "future", "inputs", "key", "nbytes")

    def __init__(
        self, inputs: Tensors, batch: int, key: tuple, future: asyncio.Future, deadline
    ) -> None:
        self.inputs, self.batch, self.key = inputs, batch, key
        self.future, self.deadline = future, deadline
        self.enqueued_ns = time.perf_counter_ns()
        self.nbytes = sum(map(_nbytes, inputs.values()))

    def dead(self, now: float) -> bool:
        return self.future.done() or (self.deadline is not None and now > self.deadline)


class _Gathering:
    """A worker holding a short batch while it waits for company. Arrivals of its key
    are counted as they come, and the worker is woken only once they could complete the
    batch (or at its deadline): one wake-up per batch, not one per arrival."""

    __slots__ = ("group", "key", "size", "waiter")

    def __init__(
        self, key: tuple, group: list[_Pending], size: int, waiter: asyncio.Future
    ) -> None:
        self.key, self.group, self.size, self.waiter = key, group, size, waiter


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
        self.queued_bytes = 0  # inputs held by `queue`: kept in step wherever it changes
        self.idle: list[asyncio.Future] = []  # workers waiting for any request
        self.gatherings: list[_Gathering] = []
        self.executor = ThreadPoolExecutor(max_workers=instances, thread_name_prefix=f"netc-{name}")
        self.workers = [asyncio.create_task(self._work()) for _ in range(instances)]
        self.ns_per_element: float | None = None  # moving average of run time per input value
        self.taken: list[list[_Pending]] = []  # groups workers hold: gathering or running
        self.closing = False
        # what `auto` learns from arrivals: are clients concurrent, how far apart they come
        self.concurrent = False
        self.fruitless_waits = 0
        self.gap_s = IDLE_GAP_S
        self.last_arrival: float | None = None

    def submit(
        self, inputs: Tensors, batch: int, key: tuple, deadline: float | None
    ) -> asyncio.Future:
        """Queue a request; await the returned future for its outputs. Cancelling the future
        (as gRPC does when the client goes away) takes the request out of its batch."""
        if self.closing:
            raise ModelUnavailable(f"model '{self.name}' is being unloaded; retry")
        loop = asyncio.get_running_loop()
        if self._waiting() >= self.max_queue:
            self._prune(loop.time())  # requests whose clients left must not keep others out
            if self._waiting() >= self.max_queue:
                raise QueueFull(
                    f"model '{self.name}': queue is full ({self.max_queue} requests "
                    "waiting); retry later"
                )
        self._arrived(loop.time())
        pending = _Pending(inputs, batch, key, loop.create_future(), deadline)
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
                if self._complete(gathering.size):
                    _wake(gathering.waiter)
        return pending.future

    def _arrived(self, now: float) -> None:
        """Learn the arrival pattern `auto` batching decides by."""
        if self.queue or self.taken:  # others queued, gathering or running: concurrent clients
            self.concurrent, self.fruitless_waits = True, 0
        if self.last_arrival is not None:
            gap = min(now - self.last_arrival, IDLE_GAP_S)
            self.gap_s = 0.8 * self.gap_s + 0.2 * gap
        self.last_arrival = now

    def _waiting(self) -> int:
        """Requests waiting to run: queued, or held by a batch gathering company."""
        return len(self.queue) + sum(len(g.group) for g in self.gatherings)

    def _prune(self, now: float) -> None:
        """Take every dead request (cancelled, or past its deadline) out of the queue."""
        dead = [p for p in self.queue if p.dead(now)]
        for pending in dead:
            self._dequeue(pending)
            self._expire(pending)

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
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(
                    ModelUnavailable(f"model '{self.name}' was unloaded before the request ran")
                )
        self.executor.shutdown(wait=False, cancel_futures=True)

    def _complete(self, size: int) -> bool:
        return size >= self.max_batch or size in self.preferred

    def _patience(self, size: int) -> float:
        """How long a batch of `size` may wait for company."""
        if not self.batching or self._complete(size):
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
            pending = self.queue.popleft()
            self.queued_bytes -= pending.nbytes
            self._expire(pending)
        return self.queue[0] if self.queue else None

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():  # a failed request, as Triton counts it
            self.stats.fail.add(time.perf_counter_ns() - pending.enqueued_ns)
            pending.future.set_exception(
                DeadlineExceeded(
                    f"model '{self.name}': the request's deadline passed while it was queued"
                )
            )

    def _take(self, first: _Pending, group: list[_Pending], size: int) -> int:
        """Move queued requests that batch with `first` into `group`; returns its size.
        Taken requests leave the queue, so no other worker can take them too."""
        if not self.batching:
            self._dequeue(first)
            group.append(first)
            return first.batch
        taken = []
        nbytes = sum(p.nbytes for p in group)
        for pending in self.queue:
            if (
                pending.key == first.key
                and size + pending.batch <= self.max_batch
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

    def _dequeue(self, pending: _Pending) -> None:
        self.queue.remove(pending)
        self.queued_bytes -= pending.nbytes

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
        patience = self._patience(size)
        if patience > 0:
            size = await self._gather(first, group, size, patience)
        return group

    async def _gather(
        self, first: _Pending, group: list[_Pending], size: int, patience: float
    ) -> int:
        """Hold the short batch `group` until arrivals complete it or `patience` runs out."""
        loop = asyncio.get_running_loop()
        gathering = _Gathering(first.key, group, size, loop.create_future())
        self.gatherings.append(gathering)
        timer = loop.call_later(patience, _wake, gathering.waiter)
        try:
            await gathering.waiter
        finally:
            timer.cancel()
            self.gatherings.remove(gathering)
        alone, size = size, self._take(first, group, size)
        if self.max_delay_s is None and size == alone:
            self.fruitless_waits += 1
            if self.fruitless_waits >= 2:  # the concurrent clients have gone
                self.concurrent = False
        return size

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
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            self._release(group)
            raise
        self._release(group)

    def _release(self, group: list[_Pending]) -> None:
        self.taken = [g for g in self.taken if g is not group]

    async def _answer(self, group: list[_Pending]) -> None:
        """Run the batch (inline or on a worker thread), hand each caller its slice."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for pending in group:
            if pending.dead(now):  # cancelled, or its deadline passed while the batch formed
                self._expire(pending)
        group = [p for p in group if not p.future.done()]
        if not group:
            return
        start = time.perf_counter_ns()
        samples = sum(p.batch for p in group)
        elements = sum(array.size for p in group for array in p.inputs.values())
        enqueued = sum(p.enqueued_ns for p in group)
        self.stats.queue.add(start * len(group) - enqueued, len(group))
        try:
            if (self.ns_per_element or INLINE_NS) * elements < INLINE_NS:
                results, compute_ns = self._execute(group)
            else:
                results, compute_ns = await loop.run_in_executor(
                    self.executor, self._execute, group
                )
        except Exception as exc:  # the error goes to every waiting caller
            end = time.perf_counter_ns()
            self.stats.fail.add(end * len(group) - enqueued, len(group))
            for pending in group:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        end = time.perf_counter_ns()
        self.stats.executed(samples, compute_ns, len(group))
        per_element = compute_ns / max(1, elements)
        self.ns_per_element = (
            per_element
            if self.ns_per_element is None
            else 0.9 * self.ns_per_element + 0.1 * per_element
        )
        self.stats.success.add(end * len(group) - enqueued, len(group))
        for pending, result in zip(group, results):
            if not pending.future.done():
                pending.future.set_result(result)

    def _execute(self, group: list[_Pending]) -> tuple[list[Tensors], int]:
        """Concatenate, run, split; returns each caller's results and the run time."""
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
        results, offset = [], 0
        for pending in group:
            end = offset + pending.batch
            results.append({name: value[offset:end] for name, value in outputs.items()})
            offset = end
        return results, elapsed


def _nbytes(array: np.ndarray) -> int:
    """What an input holds: for strings (an object array) the text too, not only the
    pointers, so the queue's byte bound counts a megabyte string as a megabyte."""
    if array.dtype != np.object_:
        return array.nbytes
    return array.nbytes + sum(len(item) for item in array.flat)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)

"""The batcher's queue on its own (its policies: test_batching_policy.py): a request whose
caller went away is never run, and nobody is left waiting."""

import asyncio
import threading
import time

import numpy as np
import pytest

from netc.serving.batcher import Batcher
from netc.serving.batching_policy import FixedDelay
from netc.serving.errors import DeadlineExceeded, ModelUnavailable, QueueFull
from netc.serving.stats import ModelStats


def test_cancelled_requests_are_skipped_and_others_still_run():
    ran: list[float] = []

    def slow_run(inputs):
        time.sleep(0.05)  # long enough for the test to cancel the queued request
        ran.extend(float(v) for v in inputs["x"].ravel())
        return {"y": inputs["x"] * 2}

    async def scenario():
        batcher = Batcher(
            "slow",
            slow_run,
            batching=False,
            max_batch=1,
            max_delay_s=0.0,
            preferred=(),
            max_queue=8,
            instances=1,
            stats=ModelStats(),
        )
        try:
            calls = [batcher.submit({"x": np.array([[float(i)]])}, 1, (), None) for i in range(3)]
            await asyncio.sleep(0.01)  # request 0 is running, 1 and 2 are queued
            calls[1].cancel()  # the client of request 1 hangs up
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert isinstance(results[1], asyncio.CancelledError)
    assert float(results[0]["y"][0, 0]) == 0.0 and float(results[2]["y"][0, 0]) == 4.0
    assert ran == [0.0, 2.0]  # request 1 never reached the model


def _batcher(run, *, delay_s, instances=1, max_batch=16, preferred=(), stats=None):
    return Batcher(
        "m",
        run,
        batching=True,
        max_batch=max_batch,
        max_delay_s=delay_s,
        preferred=preferred,
        max_queue=64,
        instances=instances,
        stats=stats or ModelStats(),
    )


def _double(inputs):
    return {"y": inputs["x"] * 2}


def _request(value: float):
    return {"x": np.full((1, 1), value, dtype=np.float32)}


async def _staggered(batcher, count: int, gap_s: float) -> list:
    """`count` callers arriving `gap_s` apart, as concurrent clients do."""

    async def call(i: int):
        await asyncio.sleep(i * gap_s)
        return await batcher.submit(_request(float(i)), 1, ("x",), None)

    return await asyncio.gather(*(call(i) for i in range(count)))


def test_auto_never_makes_a_lone_client_wait():
    async def scenario():
        batcher = _batcher(_double, delay_s=None)
        try:
            for i in range(20):
                result = await batcher.submit(_request(float(i)), 1, ("x",), None)
                assert float(result["y"][0, 0]) == 2.0 * i
            return batcher
        finally:
            await batcher.close()

    batcher = asyncio.run(scenario())
    assert not batcher.patience.concurrent
    assert set(batcher.stats.batch_sizes) == {1}
    assert batcher.stats.queue.ns / batcher.stats.queue.count < 500_000  # no 1 ms waits


def test_auto_batches_staggered_concurrent_clients():
    async def scenario():
        batcher = _batcher(_double, delay_s=None)
        try:
            results = await _staggered(batcher, 32, 0.0002)
            return batcher, results
        finally:
            await batcher.close()

    batcher, results = asyncio.run(scenario())
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(32)]
    assert batcher.patience.concurrent
    # arrivals 0.2 ms apart: without waiting nearly every run would hold one request
    assert batcher.stats.execution_count < 16, dict(batcher.stats.batch_sizes)


def test_auto_stops_waiting_when_the_concurrent_clients_go():
    async def scenario():
        batcher = _batcher(_double, delay_s=None)
        try:
            await _staggered(batcher, 16, 0.0002)
            assert batcher.patience.concurrent
            for i in range(4):  # one client now: its first waits find nobody
                await batcher.submit(_request(float(i)), 1, ("x",), None)
            return batcher
        finally:
            await batcher.close()

    assert not asyncio.run(scenario()).patience.concurrent


def test_auto_does_not_hold_a_batch_that_has_every_synchronous_client():
    """Two clients that each send their next request when answered: once both are in a
    batch nobody else can come, so the batch runs at once instead of waiting out the
    1 ms cap for places 3 to 16 (which made two clients slower than one)."""

    async def client(batcher: Batcher, index: int, count: int) -> None:
        for i in range(count):
            await asyncio.sleep(0.0002)  # the client's own turnaround
            result = await batcher.submit(_request(float(index * 100 + i)), 1, ("x",), None)
            assert float(result["y"][0, 0]) == 2.0 * (index * 100 + i)

    async def scenario():
        batcher = _batcher(_double, delay_s=None)
        try:
            await asyncio.gather(client(batcher, 0, 40), client(batcher, 1, 40))
            return batcher
        finally:
            await batcher.close()

    batcher = asyncio.run(scenario())
    assert batcher.patience.everyone_in(2) and not batcher.patience.everyone_in(1)
    assert max(batcher.stats.batch_sizes) == 2  # it batches them ...
    # ... without waiting out the cap: the mean queue time would be about 1 ms
    assert batcher.stats.queue.ns / batcher.stats.queue.count < 400_000


class _RecordingPatience(FixedDelay):
    """Waits 1 ms for company in batches of 2, and records what the batcher tells it."""

    __slots__ = ("found", "idle")

    def __init__(self) -> None:
        super().__init__(2, (), 0.001)
        self.idle: list[bool] = []
        self.found: list[bool] = []

    def arrived(self, now: float, others: int) -> None:
        self.idle.append(others == 0)

    def gathered(self, found_company: bool) -> None:
        self.found.append(found_company)


def test_the_batcher_tells_its_patience_what_happened():
    """Each arrival says whether anything else was queued, gathering or running; each
    wait for company says whether it found any."""
    patience = _RecordingPatience()

    async def scenario():
        batcher = _batcher(_double, delay_s=0.0)
        batcher.patience = patience
        try:
            # three at once: a full batch of 2, then one that waits and finds nobody
            await asyncio.gather(*(batcher.submit(_request(i), 1, ("x",), None) for i in range(3)))
            lone = batcher.submit(_request(3.0), 1, ("x",), None)  # nothing else in flight
            while not batcher.gatherings:  # until the worker holds it, waiting for company
                await asyncio.sleep(0)
            company = batcher.submit(_request(4.0), 1, ("x",), None)
            await asyncio.gather(lone, company)
        finally:
            await batcher.close()

    asyncio.run(scenario())
    assert patience.idle == [True, False, False, True, False]
    assert patience.found == [False, True]


def test_zero_delay_never_waits_for_company():
    waits: list = []

    async def scenario():
        batcher = _batcher(_double, delay_s=0.0)
        gather = batcher._gather

        async def recorded(first, group, size, patience):
            waits.append(patience)
            return await gather(first, group, size, patience)

        batcher._gather = recorded
        try:
            await _staggered(batcher, 16, 0.0005)
            return batcher
        finally:
            await batcher.close()

    batcher = asyncio.run(scenario())
    assert batcher.stats.inference_count == 16 and waits == []


def test_fixed_delay_dispatches_early_at_a_preferred_size():
    async def scenario():
        batcher = _batcher(_double, delay_s=5.0, preferred=(4,))
        try:
            begin = time.perf_counter()
            await _staggered(batcher, 4, 0.001)
            return batcher, time.perf_counter() - begin
        finally:
            await batcher.close()

    batcher, elapsed = asyncio.run(scenario())
    assert dict((k, v.count) for k, v in batcher.stats.batch_sizes.items()) == {4: 1}
    assert elapsed < 1.0  # did not sit out the 5 s delay


def test_two_workers_never_take_the_same_request():
    def slowish(inputs):
        time.sleep(0.001)
        return _double(inputs)

    async def scenario():
        batcher = _batcher(slowish, delay_s=0.002, instances=2, max_batch=4)
        try:
            return batcher, await _staggered(batcher, 40, 0.0001)
        finally:
            await batcher.close()

    batcher, results = asyncio.run(scenario())
    assert [float(r["y"][0, 0]) for r in results] == [2.0 * i for i in range(40)]
    assert batcher.stats.inference_count == 40  # each request ran exactly once


def test_deadline_that_passes_while_the_batch_waits_fails_the_request():
    async def scenario():
        batcher = _batcher(_double, delay_s=0.05)
        try:
            loop = asyncio.get_running_loop()
            return await asyncio.gather(
                batcher.submit(_request(1.0), 1, ("x",), loop.time() + 0.01),
                return_exceptions=True,
            )
        finally:
            await batcher.close()

    (result,) = asyncio.run(scenario())
    assert isinstance(result, DeadlineExceeded) and "deadline passed" in str(result)


def _slow(inputs):
    time.sleep(0.2)  # long enough to be caught running
    return _double(inputs)


def _on_worker_thread(run, **kwargs):
    batcher = _batcher(run, **kwargs)
    batcher.cost.ns_per_element = 10_000_000  # as after a slow first run: batches go to the thread
    return batcher


def test_close_lets_a_running_batch_finish():
    async def scenario():
        batcher = _on_worker_thread(_slow, delay_s=0.0)
        running = batcher.submit(_request(1.0), 1, ("x",), None)
        await asyncio.sleep(0.05)  # on the worker thread now
        await batcher.close()  # a reload or shutdown
        return running

    running = asyncio.run(scenario())
    assert float(running.result()["y"][0, 0]) == 2.0


def test_close_answers_what_it_cannot_finish_as_unavailable():
    async def scenario():
        batcher = _on_worker_thread(_slow, delay_s=0.0, max_batch=1)
        calls = [batcher.submit(_request(float(i)), 1, ("x",), None) for i in range(3)]
        await asyncio.sleep(0.05)
        await batcher.close(drain_s=0.0)  # no time to drain: nobody may be left waiting
        with pytest.raises(ModelUnavailable, match="being unloaded"):
            batcher.submit(_request(9.0), 1, ("x",), None)
        return calls

    calls = asyncio.run(scenario())
    assert all(call.done() for call in calls)
    errors = [call.exception() for call in calls]
    assert all(isinstance(e, ModelUnavailable) for e in errors), errors
    assert "unloaded before the request ran" in str(errors[0])


def test_clients_that_left_do_not_fill_the_queue():
    async def scenario():
        batcher = _on_worker_thread(_slow, delay_s=0.0, max_batch=1)
        batcher.max_queue = 2
        running = batcher.submit(_request(0.0), 1, ("x",), None)
        await asyncio.sleep(0.02)  # request 0 runs; the queue is empty
        for call in [batcher.submit(_request(1.0), 1, ("x",), None) for _ in range(2)]:
            call.cancel()  # both clients hang up while queued
        accepted = batcher.submit(_request(2.0), 1, ("x",), None)  # not QueueFull
        with_room = batcher.submit(_request(3.0), 1, ("x",), None)
        with pytest.raises(QueueFull):
            batcher.submit(_request(4.0), 1, ("x",), None)  # two live ones wait: full
        results = await asyncio.gather(running, accepted, with_room)
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert [float(r["y"][0, 0]) for r in results] == [0.0, 4.0, 6.0]


def test_admit_refuses_before_a_request_is_decoded_what_submit_would():
    """`admit` (called before decoding, so a storm of retries costs little) refuses a full
    queue and a closing model exactly as `submit` does, and makes room by dropping
    requests whose clients left, as `submit` does."""

    async def scenario():
        batcher = _on_worker_thread(_slow, delay_s=0.0, max_batch=1)
        batcher.max_queue = 1
        running = batcher.submit(_request(0.0), 1, ("x",), None)
        await asyncio.sleep(0.02)  # request 0 runs; the queue is empty
        batcher.admit()  # room for one
        queued = batcher.submit(_request(1.0), 1, ("x",), None)
        with pytest.raises(QueueFull, match="queue is full"):
            batcher.admit()
        queued.cancel()  # its client hangs up: there is room again
        batcher.admit()
        await running
        await batcher.close()
        with pytest.raises(ModelUnavailable, match="being unloaded"):
            batcher.admit()

    asyncio.run(scenario())


def test_a_large_input_after_small_ones_runs_off_the_event_loop():
    """Run time follows the input's size: many tiny pictures must not make a huge one run
    on the event loop, where it would hold every other call."""
    threads = []

    def run(inputs):
        threads.append(threading.current_thread().name)
        return _double(inputs)

    async def scenario():
        batcher = _batcher(run, delay_s=0.0)
        for _ in range(5):
            await batcher.submit({"x": np.ones((1, 3, 4, 4), np.float32)}, 1, ("4",), None)
        batcher.cost.ns_per_element = 100.0  # 4.8 µs for a 3x4x4 picture
        await batcher.submit({"x": np.ones((1, 3, 4, 4), np.float32)}, 1, ("4",), None)
        await batcher.submit({"x": np.ones((1, 3, 200, 200), np.float32)}, 1, ("200",), None)
        await batcher.close()

    asyncio.run(scenario())
    loop_thread = threading.main_thread().name
    assert threads[-2] == loop_thread  # 48 values: inline
    assert threads[-1].startswith("netc-m")  # 120,000 values, ~12 ms expected: the worker


def test_statistics_count_as_triton_does():
    """compute_infer counts requests (each spent its batch's run), batch stats count runs,
    and a request whose deadline passed in the queue is a failure."""
    stats = ModelStats()

    async def scenario():
        batcher = _batcher(_double, delay_s=0.05, stats=stats)
        await asyncio.gather(*(batcher.submit(_request(1.0), 1, ("x",), None) for _ in range(3)))
        loop = asyncio.get_running_loop()
        late = batcher.submit(_request(1.0), 1, ("x",), loop.time() - 1)
        with pytest.raises(DeadlineExceeded):
            await late
        assert batcher.queued_bytes == 0  # the expired request left the byte count too
        await batcher.close()

    asyncio.run(scenario())
    assert stats.success.count == 3 and stats.execution_count == 1
    assert stats.compute_infer.count == 3 and stats.batch_sizes[3].count == 1
    assert stats.compute_infer.ns == 3 * stats.batch_sizes[3].ns
    assert stats.fail.count == 1


def test_batches_and_the_queue_are_bounded_in_bytes_too(monkeypatch):
    from netc.serving import batcher as module

    monkeypatch.setattr(module, "MAX_BATCH_BYTES", 8)  # two 1x1 float32 requests
    monkeypatch.setattr(module, "MAX_QUEUE_BYTES", 12)  # three
    sizes = []

    def run(inputs):
        sizes.append(len(inputs["x"]))
        return _double(inputs)

    async def scenario():
        batcher = _batcher(run, delay_s=0.0)
        calls = [batcher.submit(_request(float(i)), 1, ("x",), None) for i in range(3)]
        assert batcher.queued_bytes == 12
        with pytest.raises(QueueFull, match="queue holds 0 MiB of inputs"):
            batcher.submit(_request(9.0), 1, ("x",), None)
        results = await asyncio.gather(*calls)
        assert batcher.queued_bytes == 0
        await batcher.close()
        return results

    results = asyncio.run(scenario())
    assert sizes == [2, 1] and [float(r["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0]

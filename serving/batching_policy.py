"""The batcher's decisions, apart from its queue: how long a short batch waits for
company (a `Patience`: `FixedDelay` or `AutoDelay`) and where a batch runs (`RunCost`).

Each object is told what happened (an arrival, a wait's outcome, a run's time) with
explicit times, and answers from that alone: no clock, no event loop, so it is tested
with made-up timings. What these rules buy on real load is measured by bench/serve.py
and written up in bench/README.md ("bench/serve.py").
"""

from __future__ import annotations

AUTO_MAX_DELAY_S = 0.001  # the longest `auto` makes a request wait for company
IDLE_GAP_S = 0.01  # a gap between arrivals longer than this is idleness, not load
FRUITLESS_WAITS = 2  # waits that brought nobody before `auto` stops waiting
PEAK_DECAY = 1 / 32  # how fast `auto` forgets a peak of concurrent requests, per arrival
INLINE_NS = 1_000_000  # batches expected to run faster than this skip the worker thread
MAX_HELD_REFUSALS = 256  # refusals waiting for their turn; past this, refused at once


class Patience:
    """When a short batch dispatches: at once on reaching `max_batch` or a preferred
    size, else after `wait_s(size)`. The batcher tells it of each arrival and of each
    wait's outcome; this base learns nothing from them."""

    __slots__ = ("max_batch", "preferred")

    def __init__(self, max_batch: int, preferred: tuple[int, ...]) -> None:
        self.max_batch, self.preferred = max_batch, frozenset(preferred)

    def complete(self, size: int) -> bool:
        """Whether a batch of `size` samples dispatches without waiting."""
        return size >= self.max_batch or size in self.preferred

    def wait_s(self, size: int) -> float:
        """How long a batch of `size` samples may wait for company."""
        raise NotImplementedError

    def everyone_in(self, requests: int) -> bool:
        """Whether a batch of `requests` requests already holds every client that could
        join it (so waiting for company only adds latency); this base never knows."""
        return False

    def arrived(self, now: float, others: int) -> None:
        """A request arrived at `now` (seconds) while `others` requests were queued,
        gathering or running."""

    def gathered(self, found_company: bool) -> None:
        """A wait for company ended; `found_company`: the batch grew during it."""


class FixedDelay(Patience):
    """A short batch waits `delay_s` (the model's `max_queue_delay_us`); 0 never waits,
    and batches only what queued while the model was busy."""

    __slots__ = ("delay_s",)

    def __init__(self, max_batch: int, preferred: tuple[int, ...], delay_s: float) -> None:
        super().__init__(max_batch, preferred)
        self.delay_s = delay_s

    def wait_s(self, size: int) -> float:
        return 0.0 if self.complete(size) else self.delay_s


class AutoDelay(Patience):
    """`auto`: wait only while clients are sending concurrently, as long as the recent
    arrival rate needs to fill the batch, at most `max_delay_s`.

    1. Clients are concurrent once a request arrives while others are queued, gathering
       or running (`arrived(others > 0)`); they stop being so after `FRUITLESS_WAITS`
       waits that brought nobody, counted since that last arrival. A lone client never
       waits, so batching costs it no latency; the gain under concurrent load is in
       bench/README.md ("bench/serve.py").
    2. The arrival gap is a moving average (weight 0.2 on the newest) of the gaps
       between arrivals, each capped at `idle_gap_s`, so a pause reads as idleness
       rather than as a slow rate.
    3. A batch of `size` waits `(max_batch - size) * gap`: the time the remaining
       places take to arrive at the recent rate, capped at `max_delay_s`.
    4. A batch stops waiting once it holds as many requests as were recently in the
       server at once (`peak`: the most seen at an arrival, forgotten by `PEAK_DECAY`
       an arrival): with N synchronous clients, a batch of N has nobody left to wait
       for, and waiting on for places N+1..max_batch only delays all N (two clients of a
       small model were slower than one, bench/README.md "perf_analyzer").
    """

    __slots__ = (
        "fruitless_waits",
        "gap_s",
        "idle_gap_s",
        "last_arrival",
        "max_delay_s",
        "peak",
    )

    def __init__(
        self,
        max_batch: int,
        preferred: tuple[int, ...],
        *,
        max_delay_s: float = AUTO_MAX_DELAY_S,
        idle_gap_s: float = IDLE_GAP_S,
    ) -> None:
        super().__init__(max_batch, preferred)
        self.max_delay_s, self.idle_gap_s = max_delay_s, idle_gap_s
        self.gap_s = idle_gap_s
        self.last_arrival: float | None = None
        # Waits that brought nobody since the last arrival that found company; it starts
        # at the limit: not concurrent until one does.
        self.fruitless_waits = FRUITLESS_WAITS
        self.peak = 1.0  # Case 4: the most requests recently in the server at once

    @property
    def concurrent(self) -> bool:
        """Case 1: are clients sending concurrently?"""
        return self.fruitless_waits < FRUITLESS_WAITS

    def wait_s(self, size: int) -> float:
        # not concurrent (the property inlined: a lone client asks before every batch)
        if self.fruitless_waits >= FRUITLESS_WAITS or self.complete(size):
            return 0.0
        return min(self.max_delay_s, (self.max_batch - size) * self.gap_s)  # Case 3

    def everyone_in(self, requests: int) -> bool:
        return requests >= self.peak  # Case 4

    def arrived(self, now: float, others: int) -> None:
        if others:  # Case 1: others queued, gathering or running
            self.fruitless_waits = 0
        self.peak = max(others + 1, self.peak - PEAK_DECAY)  # Case 4
        if self.last_arrival is not None:  # Case 2
            gap = min(now - self.last_arrival, self.idle_gap_s)
            self.gap_s = 0.8 * self.gap_s + 0.2 * gap
        self.last_arrival = now

    def gathered(self, found_company: bool) -> None:
        if not found_company:  # Case 1: the concurrent clients may have gone
            self.fruitless_waits += 1


def patience_for(
    batching: bool, max_batch: int, preferred: tuple[int, ...], max_delay_s: float | None
) -> Patience:
    """The wait policy of a model's configuration: `max_delay_s` None is `auto`; with
    batching off nothing waits."""
    if not batching:
        return FixedDelay(max_batch, preferred, 0.0)
    if max_delay_s is None:
        return AutoDelay(max_batch, preferred)
    return FixedDelay(max_batch, preferred, max_delay_s)


class RunCost:
    """Where a batch runs: on the event loop when it is expected to take under
    `inline_ns`, else on a worker thread, so the loop keeps accepting requests.

    For short runs the thread hand-off (and the GIL traffic it brings) costs more than
    the run; bench/README.md ("bench/serve.py") has the measurements. The expectation
    is `ns_per_element` times the batch's input elements, not its sample count: for a
    fully convolutional model a huge picture after many tiny ones must not run on the
    loop, where it would hold every other call. `ns_per_element` is a moving average
    (weight 0.1 on the newest run); until a run has been timed every batch goes to the
    thread.
    """

    __slots__ = ("inline_ns", "ns_per_element")

    def __init__(self, inline_ns: int = INLINE_NS) -> None:
        self.inline_ns = inline_ns
        self.ns_per_element: float | None = None

    def inline(self, elements: int) -> bool:
        """Whether a batch of `elements` input values should run on the event loop."""
        return (self.ns_per_element or self.inline_ns) * elements < self.inline_ns

    def observe(self, elements: int, ns: int) -> None:
        """A batch of `elements` input values ran in `ns` nanoseconds."""
        per_element = ns / max(1, elements)
        self.ns_per_element = (
            per_element
            if self.ns_per_element is None
            else 0.9 * self.ns_per_element + 0.1 * per_element
        )


class RefusalPace:
    """When a refusal (a full queue's RESOURCE_EXHAUSTED) is answered: at most
    `per_second` a second go out, each later one held until its turn.

    A lone excess request is refused at once; a storm of clients that retry the moment
    they are refused is paced. Every refusal costs the client and the server the
    request's bytes and a round trip, on the cores the model runs on: unpaced, 16
    clients retrying a 10 ms model's 590 KB requests made ~600 refusals a second and
    left the model a third of its unloaded rate (bench/README.md, "overload"). Held
    calls are bounded (`max_held`); past that a refusal is answered at once. 0 a second
    answers every refusal at once, as Triton does.
    """

    __slots__ = ("held", "interval", "max_held", "next_at")

    def __init__(self, per_second: int, max_held: int = MAX_HELD_REFUSALS) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self.max_held = max_held
        self.held = 0  # refusals waiting for their turn (the caller counts them)
        self.next_at = float("-inf")  # the earliest time the next refusal may go out

    def delay(self, now: float) -> float:
        """Seconds the refusal arriving at `now` waits before it is answered."""
        if self.interval == 0.0 or self.held >= self.max_held:
            return 0.0
        turn = max(now, self.next_at)
        self.next_at = turn + self.interval
        return turn - now

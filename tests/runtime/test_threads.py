"""torch's thread count for training: the faster of one thread and torch's default, by
injected step timings (no clock in these tests)."""

import pytest

from netc.runtime import threads
from netc.runtime.threads import choose_threads


def _measure(seconds: dict[int, float]):
    calls = []

    def measure(count):
        calls.append(count)
        return seconds[count]

    return measure, calls


def test_a_clearly_short_step_runs_on_one_thread_without_timing_more():
    measure, calls = _measure({1: 0.0005, 2: 0.0001})
    choice = choose_threads(measure, default=2)
    assert choice.threads == 1 and calls == [1]
    assert "a step takes 0.5 ms, too short to split" in choice.line()


@pytest.mark.parametrize(
    ("one", "many", "expected"),
    [(0.010, 0.004, 4), (0.010, 0.008, 4), (0.010, 0.009, 1), (0.010, 0.030, 1)],
)
def test_the_default_must_be_clearly_faster(one, many, expected):
    measure, calls = _measure({1: one, 4: many})
    choice = choose_threads(measure, default=4)
    assert choice.threads == expected
    assert calls == [1, 4] * threads.ROUNDS  # alternating, within the budget
    assert f"{one * 1e3:.1f} ms on 1 thread and {many * 1e3:.1f} ms on 4" in choice.reason


def test_slow_steps_are_timed_once_each():
    measure, calls = _measure({1: 1.5, 2: 1.0})
    assert choose_threads(measure, default=2).threads == 2  # 1.0 <= 0.8 × 1.5
    assert calls == [1, 2]


def test_one_thread_by_default_measures_nothing():
    measure, calls = _measure({})
    assert choose_threads(measure, default=1).threads == 1 and calls == []

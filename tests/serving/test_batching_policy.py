"""The batcher's policies on their own, driven with made-up times: no clock, no loop."""

import pytest

from netc.serving.batching_policy import (
    FRUITLESS_WAITS,
    PEAK_DECAY,
    AutoDelay,
    FixedDelay,
    RefusalPace,
    RunCost,
    patience_for,
)


def _concurrent(auto: AutoDelay, *times: float) -> AutoDelay:
    """Arrivals at `times`, each while others are queued: the clients are concurrent."""
    for now in times:
        auto.arrived(now, others=1)
    return auto


def test_a_batch_is_complete_at_max_batch_or_a_preferred_size():
    fixed = FixedDelay(8, (2, 4), 0.005)
    assert [size for size in range(1, 11) if fixed.complete(size)] == [2, 4, 8, 9, 10]


def test_fixed_delay_waits_its_delay_unless_the_batch_is_complete():
    fixed = FixedDelay(8, (4,), 0.005)
    assert [fixed.wait_s(size) for size in (1, 3, 4, 5, 8)] == [0.005, 0.005, 0.0, 0.005, 0.0]
    for now in (0.0, 0.0001, 0.0002):  # it learns nothing from arrivals or waits
        fixed.arrived(now, others=1)
    fixed.gathered(found_company=False)
    assert fixed.wait_s(1) == 0.005


def test_zero_delay_never_waits():
    zero = FixedDelay(16, (), 0.0)
    assert all(zero.wait_s(size) == 0.0 for size in range(1, 17))


def test_the_configuration_picks_the_policy():
    assert isinstance(patience_for(True, 16, (), None), AutoDelay)
    fixed = patience_for(True, 16, (4,), 0.002)
    assert isinstance(fixed, FixedDelay) and fixed.wait_s(1) == 0.002
    off = patience_for(False, 16, (), None)  # batching off: nothing waits, not even `auto`
    assert _concurrent(off, 0.0, 0.0001).wait_s(1) == 0.0
    assert not isinstance(off, AutoDelay)


def test_auto_never_makes_a_lone_client_wait():
    auto = AutoDelay(16, ())
    for i in range(100):  # back to back, but each finds nothing else queued or running
        auto.arrived(i * 0.0001, others=0)
    assert not auto.concurrent and auto.wait_s(1) == 0.0


def test_auto_waits_for_the_places_left_at_the_recent_arrival_rate():
    auto = _concurrent(AutoDelay(16, (), max_delay_s=1.0, idle_gap_s=0.01), 0.0, 0.005)
    assert auto.gap_s == pytest.approx(0.8 * 0.01 + 0.2 * 0.005)  # Case 2: 0.009
    assert auto.concurrent
    assert auto.wait_s(6) == pytest.approx(10 * 0.009)  # Case 3: ten places left


def test_auto_caps_the_wait_at_max_delay():
    auto = _concurrent(AutoDelay(16, (), max_delay_s=0.001), 0.0, 0.0002)
    assert auto.gap_s * 15 > 0.001 and auto.wait_s(1) == 0.001


def test_auto_does_not_wait_with_a_complete_batch():
    auto = _concurrent(AutoDelay(16, (8,), max_delay_s=1.0), 0.0, 0.001)
    assert auto.wait_s(8) == 0.0 and auto.wait_s(16) == 0.0 and auto.wait_s(7) > 0


def test_auto_knows_a_batch_holding_every_concurrent_request_is_complete():
    auto = AutoDelay(16, ())
    assert auto.everyone_in(1)  # before any concurrency: one is everyone
    auto.arrived(0.0, others=0)
    auto.arrived(0.0001, others=2)  # three requests in the server at once
    assert auto.peak == 3
    assert not auto.everyone_in(2) and auto.everyone_in(3)
    for i in range(2, 40):  # then a single client: the peak is forgotten, gradually
        auto.arrived(i * 0.001, others=0)
    assert auto.peak == pytest.approx(3 - 38 * PEAK_DECAY)
    assert auto.everyone_in(2) and not auto.everyone_in(1)


def test_fixed_delay_never_cuts_its_wait_short_for_concurrency():
    fixed = FixedDelay(16, (), 0.005)
    fixed.arrived(0.0, others=1)
    assert not fixed.everyone_in(2) and not fixed.everyone_in(100)


def test_auto_reads_a_long_pause_as_idleness_not_a_slow_rate():
    auto = _concurrent(AutoDelay(16, (), idle_gap_s=0.01), 0.0, 100.0)
    assert auto.gap_s == pytest.approx(0.01)  # the 100 s gap counted as 10 ms


def test_auto_stops_waiting_after_waits_that_brought_nobody():
    auto = _concurrent(AutoDelay(16, ()), 0.0, 0.0001)
    for _ in range(5):  # waits that filled their batch do not count
        auto.gathered(found_company=True)
    for _ in range(FRUITLESS_WAITS - 1):
        auto.gathered(found_company=False)
    assert auto.concurrent
    auto.gathered(found_company=False)
    assert not auto.concurrent and auto.wait_s(1) == 0.0
    auto.arrived(0.0002, others=1)  # a request finds others again: concurrent again
    assert auto.concurrent and auto.wait_s(1) > 0


def test_an_arrival_with_company_forgives_earlier_fruitless_waits():
    auto = _concurrent(AutoDelay(16, ()), 0.0)
    for _ in range(FRUITLESS_WAITS - 1):
        auto.gathered(found_company=False)
    auto.arrived(0.0001, others=1)
    auto.gathered(found_company=False)
    assert auto.concurrent


def test_an_untimed_model_runs_every_batch_on_the_worker_thread():
    cost = RunCost(inline_ns=1_000_000)
    assert not cost.inline(1) and not cost.inline(1_000)


def test_run_cost_runs_inline_only_what_it_expects_under_the_limit():
    cost = RunCost(inline_ns=1_000_000)
    cost.observe(100, 1_000)  # 10 ns per input value
    assert cost.ns_per_element == 10.0
    assert cost.inline(99_999)  # 0.99999 ms expected
    assert not cost.inline(100_000)  # 1 ms: not under the limit


def test_run_cost_follows_input_elements_not_samples():
    """Many tiny pictures must not make a huge one run on the event loop."""
    cost = RunCost(inline_ns=1_000_000)
    for _ in range(50):
        cost.observe(3 * 4 * 4, 4_800)  # 100 ns per value
    assert cost.inline(3 * 4 * 4)
    assert not cost.inline(3 * 200 * 200)  # one sample too, but 12 ms expected


def test_run_cost_is_a_moving_average_of_recent_runs():
    cost = RunCost()
    cost.observe(100, 1_000)
    cost.observe(100, 11_000)
    assert cost.ns_per_element == pytest.approx(0.9 * 10 + 0.1 * 110)
    cost.observe(0, 500)  # a batch without input values counts as one
    assert cost.ns_per_element == pytest.approx(0.9 * 20 + 0.1 * 500)


def test_refusals_go_out_at_most_at_their_pace():
    pace = RefusalPace(50)  # one every 20 ms
    assert pace.delay(10.0) == 0.0  # a lone refusal: at once
    assert [pace.delay(10.001) for _ in range(3)] == pytest.approx([0.019, 0.039, 0.059])
    assert pace.delay(11.0) == 0.0  # the storm over, at once again


def test_held_refusals_are_bounded_and_zero_a_second_is_unpaced():
    pace = RefusalPace(10, max_held=2)
    pace.delay(0.0)
    pace.held = 2  # two wait their turn: the next is answered at once, its turn not taken
    assert pace.delay(0.0) == 0.0 and pace.next_at == pytest.approx(0.1)
    unpaced = RefusalPace(0)
    assert all(unpaced.delay(0.0) == 0.0 for _ in range(100))

"""Latency reporting and how failures during an ejection count."""

from __future__ import annotations

import time

import pytest

from scalekit.balancing import LeastConnections, OutlierEjection, RoundRobin
from scalekit.testing import FakeClock


@pytest.mark.parametrize("make", [RoundRobin, LeastConnections])
def test_latency_is_a_moving_average_of_what_leases_and_reports_saw(make: type) -> None:
    clock = FakeClock()
    balancer = make(["a"], clock=clock)
    assert balancer.stats().backends["a"].latency is None
    with balancer.lease():
        clock.advance(0.100)
    assert balancer.stats().backends["a"].latency == pytest.approx(0.100)
    balancer.report("a", True, latency=0.200)
    assert balancer.stats().backends["a"].latency == pytest.approx(0.100 + 0.2 * 0.100)


def test_failures_of_requests_already_in_flight_do_not_reeject_on_readmission() -> None:
    clock = FakeClock()
    balancer = RoundRobin(["a", "b"], clock=clock, ejection=OutlierEjection(consecutive_failures=5))
    for _ in range(5):
        balancer.report("a", False)
    assert balancer.healthy() == ("b",)
    for _ in range(4):  # stragglers sent before the ejection
        balancer.report("a", False)
    clock.advance(30)
    assert balancer.healthy() == ("a", "b")
    balancer.report("a", False)  # one fresh failure is not five
    assert balancer.healthy() == ("a", "b")
    stats = balancer.stats().backends["a"]
    assert (stats.failures, stats.ejections) == (10, 1)


def test_panic_mode_spreads_over_all_when_too_few_are_healthy() -> None:
    clock = FakeClock()
    balancer = RoundRobin(["a", "b", "c", "d"], clock=clock, panic_threshold=50)
    balancer.mark_down("d")  # by hand: stays out even in panic
    for backend in ("a", "b"):
        for _ in range(5):
            balancer.report(backend, False)
    # a and b ejected, d down: 1 of 4 healthy < 50 %: pick among a, b, c
    picks = {balancer.pick() for _ in range(9)}
    assert picks == {"a", "b", "c"}
    stats = balancer.stats()
    assert stats.panicking
    assert stats.panic_picks == 9
    clock.advance(30)  # the ejections end: back to normal
    assert {balancer.pick() for _ in range(6)} == {"a", "b", "c"}
    assert not balancer.stats().panicking


def test_no_panic_below_the_threshold() -> None:
    balancer = RoundRobin(["a", "b", "c"], clock=FakeClock(), panic_threshold=0)
    for _ in range(5):
        balancer.report("a", False)
    assert {balancer.pick() for _ in range(6)} == {"b", "c"}
    assert balancer.stats().panic_picks == 0


def test_health_checker_marks_down_after_fall_and_up_after_rise() -> None:
    from scalekit.balancing import HealthChecker

    balancer = RoundRobin(["a", "b"])
    alive = {"a": True, "b": True}
    checker = HealthChecker(balancer, lambda backend: alive[backend], rise=2, fall=3)
    alive["a"] = False
    checker.check_all()
    checker.check_all()
    assert balancer.healthy() == ("a", "b")  # two failures: not yet
    checker.check_all()
    assert balancer.healthy() == ("b",)
    alive["a"] = True
    checker.check_all()
    assert balancer.healthy() == ("b",)  # one pass: not yet
    checker.check_all()
    assert balancer.healthy() == ("a", "b")


def test_a_check_that_raises_counts_as_failed_and_is_kept() -> None:
    from scalekit.balancing import HealthChecker

    balancer = RoundRobin(["a"], panic_threshold=0)

    def check(backend: str) -> bool:
        raise ConnectionRefusedError(backend)

    checker = HealthChecker(balancer, check, fall=1)
    assert checker.check_all() == {"a": False}
    assert isinstance(checker.last_error["a"], ConnectionRefusedError)
    assert balancer.healthy() == ()


def test_health_checker_runs_async_checks_as_a_task() -> None:
    import asyncio

    from scalekit.balancing import HealthChecker

    balancer = LeastConnections(["a", "b"], panic_threshold=0)
    probes: list[str] = []

    async def check(backend: str) -> bool:
        probes.append(backend)
        return backend == "a"

    async def scenario() -> tuple[str, ...]:
        checker = HealthChecker(balancer, check, interval=0.01, fall=2)
        checker.start_async()
        while probes.count("b") < 3:
            await asyncio.sleep(0.01)
        checker.stop()
        return balancer.healthy()

    assert asyncio.run(scenario()) == ("a",)


def test_health_checker_thread_starts_and_stops() -> None:
    import threading

    from scalekit.balancing import HealthChecker

    balancer = RoundRobin(["a"], panic_threshold=0)
    seen = threading.Event()

    def check(backend: str) -> bool:
        seen.set()
        return False

    checker = HealthChecker(balancer, check, interval=0.01, fall=1)
    checker.start()
    assert seen.wait(5)
    deadline = time.monotonic() + 5
    while balancer.healthy() and time.monotonic() < deadline:
        time.sleep(0.005)  # stop() abandons a round in progress: wait for one to end
    checker.stop()
    assert balancer.healthy() == ()
    assert not checker.running

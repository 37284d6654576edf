"""Latency reporting and how failures during an ejection count."""

from __future__ import annotations

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

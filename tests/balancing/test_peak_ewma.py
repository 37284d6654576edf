"""PeakEwma: Finagle's latency-aware balancer, with a FakeClock for every timing."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from scalekit.balancing import PeakEwma
from scalekit.errors import ConfigurationError
from scalekit.testing import FakeClock


def make(backends: list[str], **kwargs: object) -> tuple[PeakEwma[str], FakeClock]:
    clock = FakeClock()
    return PeakEwma(backends, clock=clock, rng=random.Random(7), **kwargs), clock  # type: ignore[arg-type]


def test_the_faster_backend_wins() -> None:
    balancer, _ = make(["fast", "slow"])
    balancer.report("fast", True, latency=0.010)
    balancer.report("slow", True, latency=0.200)
    assert {balancer.pick() for _ in range(20)} == {"fast"}


def test_a_slower_answer_raises_the_estimate_at_once() -> None:
    balancer, clock = make(["a"])
    balancer.report("a", True, latency=0.010)
    clock.advance(1.0)
    balancer.report("a", True, latency=0.500)  # the peak
    assert balancer.latency("a") == 0.500


def test_the_estimate_decays_towards_faster_answers_and_while_idle() -> None:
    balancer, clock = make(["a"], decay=10.0)
    assert balancer.latency("a") is None
    balancer.report("a", True, latency=0.100)
    clock.advance(10.0)
    assert balancer.latency("a") == pytest.approx(0.100 / math.e)  # idle: decays
    balancer.report("a", True, latency=0.020)
    kept = math.exp(-1)
    assert balancer.latency("a") == pytest.approx(0.100 * kept + 0.020 * (1 - kept))
    balancer.report("a", True, latency=0.020)  # no time passed: the sample weighs nothing
    assert balancer.latency("a") == pytest.approx(0.100 * kept + 0.020 * (1 - kept))


def test_requests_in_flight_multiply_the_cost() -> None:
    balancer, _ = make(["fast", "slow"])
    balancer.report("fast", True, latency=0.010)
    balancer.report("slow", True, latency=0.100)
    held = [balancer.lease() for _ in range(12)]
    counts = Counter(lease.backend for lease in held)
    # fast costs 0.01 * (n + 1): slow (0.1 idle) wins once fast has 10 in flight
    assert counts == {"fast": 11, "slow": 1}


def test_weight_divides_the_cost() -> None:
    balancer, _ = make(["a", "b"])
    balancer.set_weight("b", 4)
    balancer.report("a", True, latency=0.010)
    balancer.report("b", True, latency=0.030)  # slower, but four times the weight
    assert balancer.pick() == "b"


def test_an_unmeasured_backend_is_tried_but_not_flooded() -> None:
    balancer, _ = make(["known", "new"])
    balancer.report("known", True, latency=0.050)
    first = balancer.lease()
    assert first.backend == "new"  # idle and unknown: costs nothing
    assert [balancer.lease().backend for _ in range(5)] == ["known"] * 5
    first.release()  # its first answer gives it an estimate
    assert balancer.latency("new") is not None


def test_unmeasured_backends_share_by_requests_in_flight() -> None:
    balancer, _ = make(["a", "b"], weights={"a": 3})
    counts = Counter(balancer.lease().backend for _ in range(400))
    assert 297 <= counts["a"] <= 303


def test_a_slow_backend_gets_little_traffic() -> None:
    """Ten backends, one ten times slower: simulated requests of a closed loop."""
    names = [f"s{i}" for i in range(10)]
    balancer, clock = make(names)
    latency = dict.fromkeys(names, 0.010)
    latency["s3"] = 0.100
    for _ in range(5_000):
        with balancer.lease() as backend:
            clock.advance(latency[backend] / 10)
    picks = {b: s.picks for b, s in balancer.stats().backends.items()}
    assert picks["s3"] < 5_000 / 10 / 4  # well under its even tenth
    assert all(picks[b] > 300 for b in names if b != "s3")


def test_a_cancelled_lease_records_no_latency() -> None:
    balancer, clock = make(["a"])
    lease = balancer.lease()
    clock.advance(5.0)
    lease.release(ok=None)
    assert balancer.latency("a") is None
    assert balancer.in_flight("a") == 0


def test_a_removed_backend_forgets_its_latency() -> None:
    balancer, _ = make(["a", "b"])
    balancer.report("a", True, latency=0.300)
    balancer.remove("a")
    balancer.add("a")
    assert balancer.latency("a") is None


@pytest.mark.parametrize("decay", [0.0, -1.0, math.inf, math.nan])
def test_decay_must_be_positive_seconds(decay: float) -> None:
    with pytest.raises(ConfigurationError, match="decay"):
        PeakEwma(["a"], decay=decay)

"""FailoverGroups: Envoy's priority-level shares, routing, leases, errors."""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from typing import Any

import pytest

from scalekit.balancing import LeastConnections, RoundRobin
from scalekit.balancing._base import Balancer, BalancerStats, Lease
from scalekit.balancing._failover import FailoverGroups, FailoverStats
from scalekit.errors import ConfigurationError, DuplicateNode, NoBackendAvailable, UnknownNode


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def two_zones(seed: int = 7, **kwargs: Any) -> FailoverGroups[str]:
    return FailoverGroups(
        [RoundRobin(names("a", 10)), LeastConnections(names("b", 10))],
        rng=random.Random(seed),
        **kwargs,
    )


def zone_of(backend: str) -> int:
    return "abc".index(backend[0])


# Group 0's share with k of its 10 backends healthy, group 1 fully healthy:
# min(1, k / 10 * 1.4), and group 1 takes the rest.
EXPECTED_FIRST_SHARE = {
    10: 1.0,
    9: 1.0,
    8: 1.0,
    7: 0.98,
    6: 0.84,
    5: 0.70,
    4: 0.56,
    3: 0.42,
    2: 0.28,
    1: 0.14,
    0: 0.0,
}


def test_shares_degrade_progressively_fail_over_and_recover() -> None:
    groups = two_zones()
    assert groups.shares() == [1.0, 0.0]
    seen = {}
    for down in range(11):  # mark a0, a1, ... down one by one
        seen[10 - down] = groups.shares()
        if down < 10:
            groups.mark_down(f"a{down}")
    for healthy, first in EXPECTED_FIRST_SHARE.items():
        assert seen[healthy] == pytest.approx([first, 1 - first]), healthy
        assert sum(seen[healthy]) == pytest.approx(1.0)
    assert groups.shares() == [0.0, 1.0]  # full failover
    assert {zone_of(groups.pick()) for _ in range(200)} == {1}
    for up in range(10):  # recovery, in reverse
        groups.mark_up(f"a{up}")
        assert groups.shares() == pytest.approx(
            [EXPECTED_FIRST_SHARE[up + 1], 1 - EXPECTED_FIRST_SHARE[up + 1]]
        )
    assert groups.shares() == [1.0, 0.0]
    assert {zone_of(groups.pick()) for _ in range(200)} == {0}


def test_shares_normalize_when_all_groups_together_are_too_unhealthy() -> None:
    groups = two_zones()
    for i in range(7):
        groups.mark_down(f"a{i}")  # 3/10 healthy: 0.42
    for i in range(7):
        groups.mark_down(f"b{i}")  # 3/10 healthy: 0.42, only 0.58 was left
    assert groups.shares() == pytest.approx([0.5, 0.5])
    groups.mark_down("b7")  # 2/10 healthy: 0.28, of 0.70 assigned in all
    assert groups.shares() == pytest.approx([0.42 / 0.70, 0.28 / 0.70])


def test_three_groups_and_a_group_without_backends() -> None:
    groups = FailoverGroups(
        [RoundRobin(names("a", 4)), RoundRobin[str](), RoundRobin(names("c", 5))],
        overprovisioning=2.0,
        rng=random.Random(1),
    )
    assert groups.shares() == [1.0, 0.0, 0.0]
    for i in range(3):
        groups.mark_down(f"a{i}")  # 1/4 healthy * 2 = 0.5
    assert groups.shares() == pytest.approx([0.5, 0.0, 0.5])
    groups.mark_down("c0")
    groups.mark_down("c1")
    groups.mark_down("c2")  # 2/5 * 2 = 0.8 > 0.5 left
    assert groups.shares() == pytest.approx([0.5, 0.0, 0.5])
    groups.mark_down("c3")  # 1/5 * 2 = 0.4: 0.9 in all, normalized
    assert groups.shares() == pytest.approx([0.5 / 0.9, 0.0, 0.4 / 0.9])


@pytest.mark.parametrize("down", [0, 3, 5, 8, 10])
def test_pick_frequencies_match_the_shares(down: int) -> None:
    groups = two_zones(seed=down)
    for i in range(down):
        groups.mark_down(f"a{i}")
    shares = groups.shares()
    n = 20_000
    counts = Counter(zone_of(groups.pick()) for _ in range(n))
    for index, share in enumerate(shares):
        assert abs(counts[index] / n - share) < 0.02, (index, counts, shares)
    stats = groups.stats()
    assert stats.picks == (counts[0], counts[1])
    assert stats.failovers == counts[1]
    assert stats.no_backend == 0
    assert stats.groups[0].picks == counts[0]  # the groups counted the same picks
    assert stats.groups[1].picks == counts[1]
    assert {groups.pick() for _ in range(100)} <= set(groups.healthy())


def test_the_seeded_rng_makes_picks_reproducible() -> None:
    first, second = two_zones(seed=3), two_zones(seed=3)
    for groups in (first, second):
        for i in range(6):
            groups.mark_down(f"a{i}")
    assert [first.pick() for _ in range(300)] == [second.pick() for _ in range(300)]


def test_leases_count_in_flight_on_the_chosen_group() -> None:
    groups = two_zones()
    for i in range(5):
        groups.mark_down(f"a{i}")  # shares 0.7 / 0.3
    held = [groups.lease() for _ in range(1000)]
    assert all(isinstance(lease, Lease) for lease in held)
    per_zone = Counter(zone_of(lease.backend) for lease in held)
    assert 0 < per_zone[1] < per_zone[0]
    stats = groups.stats()
    assert stats.groups[0].in_flight == per_zone[0]
    assert stats.groups[1].in_flight == per_zone[1]
    for lease in held:
        lease.release()
    stats = groups.stats()
    assert stats.groups[0].in_flight == stats.groups[1].in_flight == 0
    assert sum(s.successes for g in stats.groups for s in g.backends.values()) == 1000


def test_sync_lease_records_the_outcome_in_the_owning_group() -> None:
    groups = two_zones()
    for i in range(10):
        groups.mark_down(f"a{i}")
    with groups.lease() as backend:
        assert zone_of(backend) == 1
        assert groups.groups[1].stats().in_flight == 1
    with pytest.raises(RuntimeError), groups.lease() as failed:
        raise RuntimeError("boom")
    stats = groups.stats().groups[1].backends
    assert stats[backend].successes == 1
    assert stats[failed].failures == 1
    assert groups.stats().groups[1].in_flight == 0


def test_async_lease() -> None:
    groups = two_zones()

    async def main() -> None:
        async with groups.lease() as backend:
            assert zone_of(backend) == 0
            await asyncio.sleep(0)
            assert groups.stats().groups[0].in_flight == 1
        assert groups.stats().groups[0].in_flight == 0
        assert groups.stats().groups[0].backends[backend].successes == 1

    asyncio.run(main())


def test_report_and_marks_route_to_the_owning_group() -> None:
    first, second = RoundRobin(["a0", "a1"]), RoundRobin(["b0"])
    groups = FailoverGroups([first, second], rng=random.Random(0))
    groups.report("b0", False, latency=0.5)
    groups.report("a1", True)
    assert second.stats().backends["b0"].failures == 1
    assert second.stats().backends["b0"].latency == 0.5
    assert first.stats().backends["a1"].successes == 1
    assert first.stats().backends["a0"].successes == first.stats().backends["a0"].failures == 0
    groups.mark_down("b0")
    assert second.healthy() == ()
    assert first.healthy() == ("a0", "a1")
    groups.mark_up("b0")
    groups.set_weight("a1", 3)
    assert first.weight_of("a1") == 3
    groups.add("b1", 2, group=1)
    groups.add("a2")
    assert second.backends == ("b0", "b1")
    assert second.weight_of("b1") == 2
    assert groups.backends == ("a0", "a1", "a2", "b0", "b1")
    groups.remove("a0")
    assert groups.backends == ("a1", "a2", "b0", "b1")
    groups.mark_down("b1")
    assert groups.healthy() == ("a1", "a2", "b0")


def test_no_healthy_backend_anywhere_raises_and_is_counted() -> None:
    groups = FailoverGroups([RoundRobin(["a0"]), RoundRobin(["b0"])], rng=random.Random(0))
    groups.mark_down("a0")
    groups.mark_down("b0")
    for attempt in (groups.pick, groups.lease, groups.shares):
        with pytest.raises(NoBackendAvailable, match=r"all 2 backends .* down or ejected"):
            attempt()
    assert groups.stats().no_backend == 2  # shares() is not a pick
    groups.mark_up("b0")
    assert groups.pick() == "b0"
    empty = FailoverGroups([RoundRobin[str](), RoundRobin[str]()])
    with pytest.raises(NoBackendAvailable, match="has backends"):
        empty.pick()


def test_a_group_that_lost_its_backends_meanwhile_falls_through() -> None:
    class Flaky(RoundRobin[str]):
        def pick(self, key: Any = None) -> str:
            raise NoBackendAvailable("gone")  # as if emptied by another thread

    groups = FailoverGroups([Flaky(["a0"]), RoundRobin(["b0"])], rng=random.Random(0))
    assert groups.shares() == [1.0, 0.0]
    assert groups.pick() == "b0"
    assert groups.stats().picks == (0, 1)


def test_stats_and_protocol() -> None:
    groups = two_zones()
    assert isinstance(groups, Balancer)
    stats = groups.stats()
    assert isinstance(stats, FailoverStats)
    assert all(isinstance(s, BalancerStats) for s in stats.groups)
    assert (stats.picks, stats.failovers, stats.no_backend) == ((0, 0), 0, 0)


# -- bad input -------------------------------------------------------------


def test_no_groups_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least one group"):
        FailoverGroups([])


@pytest.mark.parametrize("value", [1, 1.0, 0.5, 0, -2, math.nan, math.inf])
def test_overprovisioning_must_exceed_one(value: float) -> None:
    with pytest.raises(ConfigurationError, match="overprovisioning"):
        FailoverGroups([RoundRobin(["a"])], overprovisioning=value)


@pytest.mark.parametrize("value", ["2", None, True])
def test_overprovisioning_must_be_a_number(value: Any) -> None:
    with pytest.raises(TypeError, match="overprovisioning"):
        FailoverGroups([RoundRobin(["a"])], overprovisioning=value)


def test_a_backend_in_two_groups_is_refused() -> None:
    with pytest.raises(DuplicateNode, match="'x' is a backend of both group 0 and group 2"):
        FailoverGroups([RoundRobin(["x"]), RoundRobin(["y"]), RoundRobin(["z", "x"])])
    groups = FailoverGroups([RoundRobin(["x"]), RoundRobin(["y"])])
    with pytest.raises(DuplicateNode, match="'y' is already a backend of group 1"):
        groups.add("y")  # to group 0
    with pytest.raises(DuplicateNode, match="'x'"):
        groups.add("x", group=1)
    assert groups.backends == ("x", "y")


def test_other_bad_groups_are_refused() -> None:
    shared = RoundRobin[str]()
    with pytest.raises(ConfigurationError, match="same balancer"):
        FailoverGroups([shared, shared])
    with pytest.raises(TypeError, match="group 1 is not a Balancer"):
        FailoverGroups([RoundRobin(["a"]), ["b"]])  # type: ignore[list-item]
    groups = FailoverGroups([RoundRobin(["a"])])
    with pytest.raises(ConfigurationError, match=r"group must be in \[0, 0\]"):
        groups.add("b", group=1)
    with pytest.raises(TypeError, match="group must be an int"):
        groups.add("b", group="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        groups.add(["unhashable"])  # type: ignore[arg-type]
    assert groups.backends == ("a",)


def test_an_unknown_backend_is_refused() -> None:
    groups = two_zones()
    for attempt in (
        lambda: groups.report("zzz", True),
        lambda: groups.mark_down("zzz"),
        lambda: groups.mark_up("zzz"),
        lambda: groups.remove("zzz"),
        lambda: groups.set_weight("zzz", 2),
    ):
        with pytest.raises(UnknownNode, match="zzz"):
            attempt()

"""The contract every scalekit load ``Balancer`` meets, whatever its algorithm.

Run it over a balancer by subclassing :class:`BalancerContract` with a ``make``
parameter (a :class:`BalancerFactory`); see tests/balancing/test_contract.py. The
part a user runs on their own balancer ships as
:func:`scalekit.testing.check_balancer`; every check of it runs here too.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from scalekit.balancing import Balancer, BalancerStats, Lease, OutlierEjection
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    NoBackendAvailable,
    NoNodeAvailable,
    UnknownNode,
)
from scalekit.testing import FakeClock
from scalekit.testing._balancer import BALANCER_CHECKS, check_balancer

__all__ = ["NO_EJECTION", "BalancerContract", "BalancerFactory", "state_of"]

# Failures never eject: for tests about something else than ejection.
NO_EJECTION = OutlierEjection(consecutive_failures=10**9)


@dataclass(frozen=True)
class BalancerFactory:
    """``make(backends, weights=None, **kwargs)`` builds one balancer.

    ``defaults`` returns fresh keyword arguments for every balancer built (a new
    seeded ``random.Random`` each time, say), so two balancers built alike behave
    alike. ``exact``: every lease goes to a least loaded / next-in-turn backend
    (not the power of two random choices).
    """

    build: Callable[..., Any]
    defaults: Callable[[], dict[str, Any]] = field(default=dict)
    exact: bool = True

    def __call__(self, backends: Any = (), weights: Any = None, **kwargs: Any) -> Any:
        return self.build(backends, weights, **{**self.defaults(), **kwargs})


def state_of(balancer: Any) -> tuple[Any, ...]:
    """Everything observable about ``balancer`` without picking."""
    return (
        balancer.backends,
        balancer.healthy(),
        tuple(balancer.weight_of(b) for b in balancer.backends),
        tuple(balancer.in_flight(b) for b in balancer.backends),
        balancer.stats(),
    )


def picks(balancer: Any, n: int) -> list[Any]:
    return [balancer.pick() for _ in range(n)]


class Boom(Exception):
    """What a failing request raises in these tests."""


class BalancerContract:
    """Every test takes ``make``, a :class:`BalancerFactory`."""

    # -- the shipped contract (scalekit.testing.check_balancer) -------------

    @pytest.mark.parametrize("check", list(BALANCER_CHECKS))
    def test_the_shipped_contract(self, make: BalancerFactory, check: str) -> None:
        BALANCER_CHECKS[check](lambda backends: make(backends), spreads=True)

    def test_check_balancer_passes(self, make: BalancerFactory) -> None:
        check_balancer(lambda backends: make(backends))

    # -- the protocol and the backends --------------------------------------

    def test_is_a_balancer(self, make: BalancerFactory) -> None:
        balancer = make(["a"])
        assert isinstance(balancer, Balancer)
        assert isinstance(balancer.lease(), Lease)

    def test_backends_weights_and_order(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c"], weights={"b": 2.5})
        assert balancer.backends == ("a", "b", "c")
        assert [balancer.weight_of(x) for x in "abc"] == [1, 2.5, 1]
        balancer.add("d")
        balancer.add("e", weight=3)
        assert balancer.backends == ("a", "b", "c", "d", "e")
        assert (balancer.weight_of("d"), balancer.weight_of("e")) == (1, 3)
        balancer.remove("a")
        balancer.add("a", 4)  # re-added: last, with its new weight
        assert balancer.backends == ("b", "c", "d", "e", "a")
        assert balancer.weight_of("a") == 4
        balancer.set_weight("b", 0.5)
        assert balancer.weight_of("b") == 0.5
        assert balancer.healthy() == balancer.backends
        assert {b: s.weight for b, s in balancer.stats().backends.items()} == {
            "b": 0.5,
            "c": 1,
            "d": 1,
            "e": 3,
            "a": 4,
        }

    def test_an_empty_balancer_has_nothing_to_pick(self, make: BalancerFactory) -> None:
        balancer = make()
        for attempt in (balancer.pick, balancer.lease, lambda: balancer.pick("some-key")):
            with pytest.raises(NoBackendAvailable, match="no backends") as caught:
                attempt()
            assert isinstance(caught.value, NoNodeAvailable)
            assert isinstance(caught.value, LookupError)
        assert balancer.stats().no_backend == 3
        assert balancer.stats().backends == {}
        balancer.add("a")
        balancer.remove("a")
        with pytest.raises(NoBackendAvailable, match="no backends"):
            balancer.pick()
        assert balancer.stats().no_backend == 4

    def test_pick_chooses_without_counting_in_flight(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c"])
        chosen = [balancer.pick() for _ in range(30)] + [balancer.pick(k) for k in range(30)]
        assert set(chosen) <= {"a", "b", "c"}
        stats = balancer.stats()
        assert stats.in_flight == 0
        assert all(balancer.in_flight(b) == 0 for b in "abc")
        assert stats.picks == 60
        assert {b: s.picks for b, s in stats.backends.items()} == {
            b: chosen.count(b) for b in "abc"
        }
        assert all(s.successes == s.failures == 0 for s in stats.backends.values())

    def test_equal_weights_share_picks(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c", "d"])
        counts = Counter(picks(balancer, 800))
        assert set(counts) == {"a", "b", "c", "d"}
        if make.exact:
            assert set(counts.values()) == {200}
        else:
            assert all(140 < n < 260 for n in counts.values())  # expected 200

    def test_weights_shift_leases(self, make: BalancerFactory) -> None:
        """Held leases go 3 to 1 with weights 3 and 1, whichever the algorithm."""
        balancer = make(["a", "b"], weights={"a": 3}, ejection=NO_EJECTION)
        held = [balancer.lease() for _ in range(400)]
        counts = Counter(lease.backend for lease in held)
        assert 297 <= counts["a"] <= 303  # 300 exactly, give or take a tie
        assert balancer.in_flight("a") == counts["a"]
        assert balancer.stats().in_flight == 400
        for lease in held:
            lease.release()
        assert balancer.stats().in_flight == 0
        assert balancer.stats().backends["a"].successes == counts["a"]

    # -- leases -------------------------------------------------------------

    def test_a_lease_counts_in_flight_until_the_block_ends(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b"])
        with balancer.lease() as backend:
            assert backend in ("a", "b")
            assert balancer.in_flight(backend) == 1
            assert balancer.stats().in_flight == 1
            assert balancer.stats().backends[backend].successes == 0
            with balancer.lease() as second:
                assert balancer.stats().in_flight == 2
                assert balancer.in_flight(second) == (2 if second == backend else 1)
        stats = balancer.stats()
        assert stats.in_flight == 0
        assert stats.picks == 2
        assert sum(s.successes for s in stats.backends.values()) == 2
        assert sum(s.failures for s in stats.backends.values()) == 0

    def test_a_lease_knows_its_backend(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c"])
        lease = balancer.lease()
        assert lease.backend in ("a", "b", "c")
        assert balancer.in_flight(lease.backend) == 1
        with lease as backend:
            assert backend == lease.backend
        assert balancer.in_flight(lease.backend) == 0

    def test_an_exception_in_the_block_is_a_failure(self, make: BalancerFactory) -> None:
        balancer = make(["a"])
        seen = []

        def fail() -> None:
            with balancer.lease() as backend:
                seen.append(balancer.in_flight(backend))
                raise Boom

        with pytest.raises(Boom):
            fail()
        assert seen == [1]
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures) == (0, 0, 1)

    @pytest.mark.parametrize(
        "interruption", [KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError]
    )
    def test_a_base_exception_releases_without_an_outcome(
        self, make: BalancerFactory, interruption: type[BaseException]
    ) -> None:
        balancer = make(["a"])
        with pytest.raises(interruption), balancer.lease():
            raise interruption
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures) == (0, 0, 0)
        assert stats.picks == 1

    def test_async_leases(self, make: BalancerFactory) -> None:
        balancer = make(["a"])

        async def main() -> None:
            async with balancer.lease() as backend:
                assert backend == "a"
                await asyncio.sleep(0)
                assert balancer.in_flight("a") == 1

            async def fail() -> None:
                async with balancer.lease():
                    await asyncio.sleep(0)
                    raise Boom

            with pytest.raises(Boom):
                await fail()
            started = asyncio.Event()

            async def hang() -> None:
                async with balancer.lease():
                    started.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(hang())
            await started.wait()
            assert balancer.in_flight("a") == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures, stats.picks) == (0, 1, 1, 3)

    def test_manual_release_and_releasing_twice(self, make: BalancerFactory) -> None:
        balancer = make(["a"])
        failed, passed, silent = balancer.lease(), balancer.lease(), balancer.lease()
        assert balancer.in_flight("a") == 3
        failed.release(False)
        passed.release()  # ok by default
        silent.release(None)
        expected = (0, 1, 1)
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures) == expected
        held = balancer.lease()
        for lease in (failed, passed, silent):  # releasing again changes nothing
            lease.release(True)
            lease.release(False)
            with lease:
                pass
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures) == (1, *expected[1:])
        with held:
            pass
        held.release(False)
        stats = balancer.stats().backends["a"]
        assert (stats.in_flight, stats.successes, stats.failures) == (0, 2, 1)

    def test_report_records_outcomes(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b"])
        balancer.report("a", True)
        balancer.report("a", False, latency=0.25)
        balancer.report("b", True, 0.1)
        stats = balancer.stats()
        assert (stats.backends["a"].successes, stats.backends["a"].failures) == (1, 1)
        assert (stats.backends["b"].successes, stats.backends["b"].failures) == (1, 0)
        assert stats.picks == 0
        assert stats.in_flight == 0

    def test_stats_totals(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c"], ejection=NO_EJECTION)
        held = [balancer.lease() for _ in range(5)]
        picks(balancer, 4)
        stats = balancer.stats()
        assert isinstance(stats, BalancerStats)
        assert stats.in_flight == 5 == sum(s.in_flight for s in stats.backends.values())
        assert stats.picks == 9 == sum(s.picks for s in stats.backends.values())
        assert stats.no_backend == 0
        held[0].release()
        assert balancer.stats().in_flight == 4
        assert stats.in_flight == 5  # a snapshot: it does not change afterwards

    # -- bad input ----------------------------------------------------------

    def test_adding_a_backend_twice_is_refused_and_changes_nothing(
        self, make: BalancerFactory
    ) -> None:
        balancer, twin = make(["a", "b", "c"]), make(["a", "b", "c"])
        picks(balancer, 2), picks(twin, 2)
        before = state_of(balancer)
        with pytest.raises(DuplicateNode, match="'b'") as caught:
            balancer.add("b", 5)
        assert isinstance(caught.value, ValueError)
        assert state_of(balancer) == before
        assert picks(balancer, 12) == picks(twin, 12)  # the rotation went on as if nothing
        with pytest.raises(DuplicateNode):
            make(["a", "b", "a"])

    @pytest.mark.parametrize("weight", [0, -1, -0.5, math.nan, math.inf, -math.inf])
    def test_a_weight_that_is_not_positive_and_finite_is_refused(
        self, make: BalancerFactory, weight: float
    ) -> None:
        balancer, twin = make(["a", "b"], {"a": 2}), make(["a", "b"], {"a": 2})
        picks(balancer, 1), picks(twin, 1)
        before = state_of(balancer)
        for change in (lambda: balancer.add("c", weight), lambda: balancer.set_weight("a", weight)):
            with pytest.raises(ConfigurationError, match="weight") as caught:
                change()
            assert isinstance(caught.value, ValueError)
            assert state_of(balancer) == before
        assert picks(balancer, 12) == picks(twin, 12)
        with pytest.raises(ConfigurationError):
            make(["a", "b"], {"b": weight})

    @pytest.mark.parametrize("weight", ["2", None, True, [1]])
    def test_a_weight_that_is_not_a_number_is_refused(
        self, make: BalancerFactory, weight: Any
    ) -> None:
        balancer = make(["a", "b"])
        before = state_of(balancer)
        with pytest.raises(TypeError):
            balancer.add("c", weight)
        with pytest.raises(TypeError):
            balancer.set_weight("a", weight)
        assert state_of(balancer) == before

    def test_an_unhashable_backend_is_refused(self, make: BalancerFactory) -> None:
        balancer = make(["a"])
        before = state_of(balancer)
        with pytest.raises(TypeError):
            balancer.add(["not", "hashable"])
        assert state_of(balancer) == before

    def test_an_unknown_backend_is_refused_and_changes_nothing(self, make: BalancerFactory) -> None:
        balancer, twin = make(["a", "b", "c"]), make(["a", "b", "c"])
        picks(balancer, 1), picks(twin, 1)
        before = state_of(balancer)
        for attempt in (
            lambda: balancer.remove("zzz"),
            lambda: balancer.mark_down("zzz"),
            lambda: balancer.mark_up("zzz"),
            lambda: balancer.set_weight("zzz", 2),
            lambda: balancer.weight_of("zzz"),
            lambda: balancer.in_flight("zzz"),
            lambda: balancer.report("zzz", False),
        ):
            with pytest.raises(UnknownNode, match="zzz") as caught:
                attempt()
            assert isinstance(caught.value, KeyError)
            assert state_of(balancer) == before
        assert picks(balancer, 12) == picks(twin, 12)
        with pytest.raises(UnknownNode, match="zzz"):
            make(["a"], weights={"a": 1, "zzz": 2})

    # -- hostile values (issue 13, item 12) ---------------------------------

    @pytest.mark.parametrize(
        ("backend", "error"),
        [
            (None, ArgumentTypeError),
            (math.nan, ConfigurationError),
            (["a"], ArgumentTypeError),
            ({"a": 1}, ArgumentTypeError),
            ("\ud800", ConfigurationError),
            ("", ConfigurationError),
        ],
        ids=["None", "nan", "list", "dict", "lone-surrogate", "empty"],
    )
    def test_a_hostile_backend_is_refused_and_changes_nothing(
        self, make: BalancerFactory, backend: Any, error: type[Exception]
    ) -> None:
        balancer, twin = make(["a", "b"]), make(["a", "b"])
        picks(balancer, 1), picks(twin, 1)
        before = state_of(balancer)
        with pytest.raises(error, match="backend"):
            balancer.add(backend)
        assert state_of(balancer) == before
        for attempt in (
            balancer.remove,
            balancer.mark_down,
            balancer.mark_up,
            balancer.weight_of,
            balancer.in_flight,
            lambda b: balancer.set_weight(b, 2),
            lambda b: balancer.report(b, False),
        ):
            with pytest.raises((UnknownNode, ArgumentTypeError)):
                attempt(backend)
            assert state_of(balancer) == before
        assert picks(balancer, 6) == picks(twin, 6)
        with pytest.raises(error, match="backend"):
            make(["a", backend])

    @pytest.mark.parametrize(
        ("weight", "error"),
        [
            (math.nan, ConfigurationError),
            (math.inf, ConfigurationError),
            pytest.param(10**400, ConfigurationError, id="10**400"),
            (1e308, ConfigurationError),
            (2.0**60, ConfigurationError),
            (-1, ConfigurationError),
            (0, ConfigurationError),
            (True, ArgumentTypeError),
            ("2", ArgumentTypeError),
            (None, ArgumentTypeError),
        ],
    )
    def test_a_hostile_weight_is_refused_everywhere_and_changes_nothing(
        self, make: BalancerFactory, weight: Any, error: type[Exception]
    ) -> None:
        balancer, twin = make(["a", "b"], {"a": 2}), make(["a", "b"], {"a": 2})
        picks(balancer, 1), picks(twin, 1)
        before = state_of(balancer)
        for change in (lambda: balancer.add("c", weight), lambda: balancer.set_weight("a", weight)):
            with pytest.raises(error, match="weight"):
                change()
            assert state_of(balancer) == before
        assert picks(balancer, 9) == picks(twin, 9)
        with pytest.raises(error, match="weight"):
            make(["a", "b"], {"b": weight})

    @pytest.mark.parametrize(
        ("settings", "error", "name"),
        [
            ({"ejection": "x"}, ArgumentTypeError, "ejection"),
            ({"ejection": 5}, ArgumentTypeError, "ejection"),
            ({"panic_threshold": math.nan}, ConfigurationError, "panic_threshold"),
            ({"panic_threshold": math.inf}, ConfigurationError, "panic_threshold"),
            ({"panic_threshold": -1}, ConfigurationError, "panic_threshold"),
            ({"panic_threshold": 100.5}, ConfigurationError, "panic_threshold"),
            ({"panic_threshold": 10**400}, ConfigurationError, "panic_threshold"),
            ({"panic_threshold": True}, ArgumentTypeError, "panic_threshold"),
            ({"panic_threshold": "50"}, ArgumentTypeError, "panic_threshold"),
            ({"slow_start": 10**400}, ConfigurationError, "slow_start"),
            ({"slow_start": 1e308}, ConfigurationError, "slow_start"),
            ({"slow_start": True}, ArgumentTypeError, "slow_start"),
            ({"slow_start": None}, ArgumentTypeError, "slow_start"),
            ({"clock": None}, ArgumentTypeError, "clock"),
            ({"clock": 1.5}, ArgumentTypeError, "clock"),
            ({"weights": ["a"]}, ArgumentTypeError, "weights"),
            ({"weights": 3}, ArgumentTypeError, "weights"),
        ],
        ids=lambda value: repr(value)[:40] if isinstance(value, dict) else None,
    )
    def test_hostile_settings_are_refused_at_construction(
        self, make: BalancerFactory, settings: dict[str, Any], error: type[Exception], name: str
    ) -> None:
        settings = dict(settings)  # shared by every balancer's run
        weights = settings.pop("weights", None)
        with pytest.raises(error, match=name):
            make(["a"], weights, **settings)

    @pytest.mark.parametrize("backends", [None, "abc", b"ab", 42, 1.5])
    def test_backends_that_are_not_a_collection_are_refused(
        self, make: BalancerFactory, backends: Any
    ) -> None:
        with pytest.raises(ArgumentTypeError, match="backends"):
            make(backends)

    def test_a_bad_ejection_policy_is_refused_before_report_could_fail(
        self, make: BalancerFactory
    ) -> None:
        with pytest.raises(ArgumentTypeError, match="ejection"):
            make(["a"], ejection="x")

    @pytest.mark.parametrize(
        ("ok", "latency", "error", "name"),
        [
            ("yes", None, ArgumentTypeError, "ok"),
            (None, None, ArgumentTypeError, "ok"),
            (1, None, ArgumentTypeError, "ok"),
            (True, math.nan, ConfigurationError, "latency"),
            (True, math.inf, ConfigurationError, "latency"),
            (True, -0.5, ConfigurationError, "latency"),
            (False, 10**400, ConfigurationError, "latency"),
            (False, True, ArgumentTypeError, "latency"),
            (False, "0.1", ArgumentTypeError, "latency"),
        ],
        ids=lambda value: None if not isinstance(value, int) or value < 10**9 else "10**400",
    )
    def test_a_hostile_report_is_refused_and_changes_nothing(
        self, make: BalancerFactory, ok: Any, latency: Any, error: type[Exception], name: str
    ) -> None:
        balancer = make(["a", "b"], clock=FakeClock())
        balancer.report("a", True, 0.25)
        before = state_of(balancer)
        with pytest.raises(error, match=name):
            balancer.report("a", ok, latency)
        assert state_of(balancer) == before
        lease = balancer.lease()
        leased = state_of(balancer)
        with pytest.raises(ArgumentTypeError, match="ok"):
            lease.release("yes")  # type: ignore[arg-type]
        assert state_of(balancer) == leased  # still held
        lease.release(False)
        assert balancer.stats().backends[lease.backend].failures == 1

    # -- health marks -------------------------------------------------------

    def test_down_backends_are_not_picked(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b", "c"])
        balancer.mark_down("b")
        assert balancer.healthy() == ("a", "c")
        assert balancer.backends == ("a", "b", "c")  # still a backend
        assert set(picks(balancer, 50)) == {"a", "c"}
        assert balancer.stats().backends["b"].down
        assert balancer.stats().backends["b"].picks == 0
        balancer.mark_down("b")  # twice: still down
        balancer.mark_up("b")
        assert balancer.healthy() == ("a", "b", "c")
        assert not balancer.stats().backends["b"].down
        assert "b" in picks(balancer, 50)

    def test_all_down_raises_and_is_counted(self, make: BalancerFactory) -> None:
        balancer = make(["a", "b"])
        held = balancer.lease()
        balancer.mark_down("a")
        balancer.mark_down("b")
        assert balancer.healthy() == ()
        with pytest.raises(NoBackendAvailable, match="down or ejected"):
            balancer.pick()
        with pytest.raises(NoBackendAvailable, match="down or ejected"):
            balancer.lease()
        stats = balancer.stats()
        assert stats.no_backend == 2
        assert stats.picks == 1
        assert stats.in_flight == 1  # the lease taken before is still counted
        held.release()
        assert balancer.stats().backends[held.backend].successes == 1  # down, still recorded
        balancer.mark_up("b")
        assert picks(balancer, 3) == ["b"] * 3

    # -- outlier ejection ---------------------------------------------------

    def test_consecutive_failures_eject_until_the_deadline(self, make: BalancerFactory) -> None:
        clock = FakeClock(100.0)
        ejection = OutlierEjection(consecutive_failures=3, base_ejection=10.0)
        balancer = make(["a", "b", "c", "d"], clock=clock, ejection=ejection, panic_threshold=0)
        balancer.report("a", False)
        balancer.report("a", False)
        assert "a" in balancer.healthy()
        assert not balancer.stats().backends["a"].ejected
        balancer.report("a", False)  # the third in a row
        assert balancer.healthy() == ("b", "c", "d")
        stats = balancer.stats().backends["a"]
        assert (stats.ejected, stats.ejections, stats.failures, stats.down) == (True, 1, 3, False)
        assert "a" not in picks(balancer, 60)
        clock.set(109.999)
        assert "a" not in picks(balancer, 60)
        assert balancer.stats().backends["a"].ejected
        clock.set(110.0)  # the deadline: re-admitted
        assert not balancer.stats().backends["a"].ejected
        assert balancer.healthy() == ("a", "b", "c", "d")
        assert "a" in picks(balancer, 60)

    def test_failed_leases_eject_from_the_very_next_pick(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        ejection = OutlierEjection(consecutive_failures=2, base_ejection=5.0)
        balancer = make(["a", "b"], clock=clock, ejection=ejection, panic_threshold=0)
        failures = 0
        for _ in range(100):
            try:
                with balancer.lease() as backend:
                    if backend == "a":
                        raise Boom
            except Boom:
                failures += 1
            if failures == 2:
                break
        stats = balancer.stats().backends
        assert (failures, stats["a"].failures, stats["a"].ejections) == (2, 2, 1)
        assert stats["b"].ejections == 0
        assert picks(balancer, 20) == ["b"] * 20
        clock.advance(5.0)
        assert "a" in picks(balancer, 20)

    def test_a_success_resets_the_count_of_failures(self, make: BalancerFactory) -> None:
        balancer = make(
            ["a", "b"], clock=FakeClock(), ejection=OutlierEjection(3), panic_threshold=0
        )
        for _ in range(5):
            balancer.report("a", False)
            balancer.report("a", False)
            balancer.report("a", True)
        balancer.mark_down("b")
        balancer.report("a", False)
        balancer.report("a", False)
        with balancer.lease() as backend:  # a success through a lease resets too
            assert backend == "a"
        balancer.report("a", False)
        balancer.report("a", False)
        assert balancer.stats().backends["a"].ejections == 0
        assert balancer.stats().backends["a"].failures == 14
        assert balancer.healthy() == ("a",)
        balancer.report("a", False)  # the third in a row
        assert balancer.healthy() == ()
        assert balancer.stats().backends["a"].ejections == 1

    def test_each_ejection_lasts_longer_up_to_the_maximum(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        ejection = OutlierEjection(consecutive_failures=1, base_ejection=10.0, max_ejection=35.0)
        balancer = make(["a", "b"], clock=clock, ejection=ejection, panic_threshold=0)
        for k, seconds in enumerate([10.0, 20.0, 30.0, 35.0, 35.0], start=1):
            deadline = clock.advance(7.0) + seconds
            balancer.report("a", False)
            assert balancer.stats().backends["a"].ejections == k
            assert balancer.healthy() == ("b",)
            balancer.report("a", False)  # while ejected: not ejected again
            assert balancer.stats().backends["a"].ejections == k
            clock.set(deadline - 0.001)
            assert balancer.healthy() == ("b",)
            clock.set(deadline)
            assert balancer.healthy() == ("a", "b")
            balancer.report("a", True)

    def test_at_most_the_percentage_is_ejected_at_once(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        ejection = OutlierEjection(consecutive_failures=1, base_ejection=10.0)  # 50 %
        balancer = make(["a", "b", "c", "d"], clock=clock, ejection=ejection, panic_threshold=0)
        balancer.report("a", False)
        clock.advance(1.0)
        for backend in "bcd":
            balancer.report(backend, False)
        stats = balancer.stats().backends
        assert [b for b, s in stats.items() if s.ejected] == ["a", "b"]
        assert balancer.healthy() == ("c", "d")
        assert set(picks(balancer, 40)) == {"c", "d"}
        clock.advance(9.0)  # a is back: room for one more
        assert balancer.healthy() == ("a", "c", "d")
        balancer.report("c", False)
        assert balancer.healthy() == ("a", "d")
        assert sum(s.ejected for s in balancer.stats().backends.values()) == 2

    def test_one_backend_may_always_be_ejected(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        balancer = make(
            ["a"], clock=clock, ejection=OutlierEjection(2, base_ejection=1.0), panic_threshold=0
        )
        balancer.report("a", False)
        balancer.report("a", False)
        with pytest.raises(NoBackendAvailable, match="down or ejected"):
            balancer.pick()
        assert balancer.stats().no_backend == 1
        clock.advance(1.0)
        assert balancer.pick() == "a"
        none_allowed = OutlierEjection(1, max_ejection_percent=0.0)
        balancer = make(["a", "b", "c"], clock=clock, ejection=none_allowed, panic_threshold=0)
        for backend in "abc":
            balancer.report(backend, False)
        assert balancer.healthy() == ("b", "c")

    def test_mark_up_ends_an_ejection(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        balancer = make(["a", "b"], clock=clock, ejection=OutlierEjection(1), panic_threshold=0)
        balancer.report("a", False)
        assert balancer.healthy() == ("b",)
        balancer.mark_up("a")
        assert balancer.healthy() == ("a", "b")
        assert not balancer.stats().backends["a"].ejected
        assert "a" in picks(balancer, 4)

    def test_ejected_and_down_together_raise(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        balancer = make(["a", "b"], clock=clock, ejection=OutlierEjection(1), panic_threshold=0)
        balancer.report("a", False)
        balancer.mark_down("b")
        with pytest.raises(NoBackendAvailable, match="down or ejected"):
            balancer.lease()
        with pytest.raises(NoBackendAvailable):
            balancer.pick()
        assert balancer.stats().no_backend == 2
        clock.advance(30.0)
        assert balancer.pick() == "a"

    # -- slow start ---------------------------------------------------------

    def test_an_added_backend_ramps_up_over_slow_start(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        balancer = make(["a"], clock=clock, slow_start=10.0, ejection=NO_EJECTION)
        assert balancer.stats().backends["a"].share == 1  # the first backends start at full
        balancer.add("b", weight=2)
        shares = []
        for _ in range(11):
            held = [balancer.lease() for _ in range(330)]
            counts = Counter(lease.backend for lease in held)
            share = balancer.stats().backends["b"].share
            shares.append(share)
            # held leases split by share: b's count / a's count is share / 1
            assert counts["b"] == pytest.approx(330 * share / (1 + share), abs=2)
            for lease in held:
                lease.release()
            clock.advance(1.0)
        assert shares == pytest.approx([0.2, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0])
        assert balancer.weight_of("b") == 2
        assert balancer.stats().backends["b"].weight == 2

    def test_a_readmitted_backend_ramps_up_again(self, make: BalancerFactory) -> None:
        clock = FakeClock()
        balancer = make(
            ["a", "b"],
            clock=clock,
            slow_start=20.0,
            ejection=OutlierEjection(1, base_ejection=30.0),
            panic_threshold=0,
        )
        balancer.report("a", False)
        assert balancer.healthy() == ("b",)
        clock.advance(40.0)  # re-admitted at 30 s, 10 s into its ramp
        assert balancer.healthy() == ("a", "b")
        assert balancer.stats().backends["a"].share == pytest.approx(0.5)
        balancer.mark_down("b")
        clock.advance(20.0)
        assert balancer.stats().backends["a"].share == 1
        balancer.mark_up("b")
        assert balancer.stats().backends["b"].share == pytest.approx(0.1)
        balancer.mark_up("b")  # already up: no new ramp
        clock.advance(19.0)
        assert balancer.stats().backends["b"].share == pytest.approx(0.9)
        clock.advance(1.0)
        assert balancer.stats().backends["b"].share == 1

    def test_slow_start_off_by_default_and_validated(self, make: BalancerFactory) -> None:
        balancer = make(["a"])
        balancer.add("b", weight=3)
        assert balancer.stats().backends["b"].share == 3
        for bad in (-1.0, math.inf, math.nan):
            with pytest.raises(ConfigurationError, match="slow_start"):
                make(["a"], slow_start=bad)

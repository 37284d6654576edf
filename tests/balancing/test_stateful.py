"""Hypothesis stateful tests: every balancer against a plain reference model.

Random sequences of add, remove, set_weight, mark_down, mark_up, pick, lease,
release, report and refused (hostile) calls; after every step the balancer's
``_check()`` holds and everything observable equals the model's. ``RoundRobin``
must also pick exactly what nginx's smooth weighted round robin picks, and exact
``LeastConnections`` a least loaded backend.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scalekit.balancing import (
    FailoverGroups,
    Lease,
    LeastConnections,
    OutlierEjection,
    PeakEwma,
    RoundRobin,
)
from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    NoBackendAvailable,
    UnknownNode,
)
from scalekit.testing import FakeClock

NAMES = st.sampled_from("abcdef")
WEIGHTS = st.integers(1, 5)
NO_EJECTION = OutlierEjection(consecutive_failures=10**9)
# Ejection on, and quick: two failures in a row eject for 10 s, 20 s, 25 s at most.
EJECTION = OutlierEjection(consecutive_failures=2, base_ejection=10.0, max_ejection=25.0)
BAD_BACKENDS = st.sampled_from([None, math.nan, ["x"], {}, "\ud800", ""])
BAD_WEIGHTS = st.sampled_from([math.nan, math.inf, 10**400, 1e308, True, -1, 0, None, "2"])
BAD_OUTCOMES = st.sampled_from([None, 1, "yes"])
REFUSED = (ArgumentTypeError, ConfigurationError)


class BalancerMachine(RuleBasedStateMachine):
    """The shared rules; a subclass says how to build its balancer and what a pick
    must be."""

    kind: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.balancer: Any = self.build(["a", "b"])
        self.weights: dict[str, int] = {"a": 1, "b": 1}  # in order added
        self.down: set[str] = set()
        self.in_flight: Counter[str] = Counter()
        self.picks: Counter[str] = Counter()
        self.successes: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.no_backend = 0
        self.held: list[tuple[Lease[str], str, int]] = []
        self.generation: dict[str, int] = {"a": 0, "b": 0}  # bumped when re-added
        self.consecutive: Counter[str] = Counter()  # failures in a row
        self.ejections: Counter[str] = Counter()
        self.ejected_until: dict[str, float] = {}  # absent: not ejected
        self.current: dict[str, float] = {}  # nginx's current weights
        self.reset()

    def build(self, backends: list[str]) -> Any:
        raise NotImplementedError

    # -- the model -----------------------------------------------------------------

    def healthy(self) -> list[str]:
        self.readmit()
        now = self.clock()
        return [
            name
            for name in self.weights
            if name not in self.down and self.ejected_until.get(name, -math.inf) <= now
        ]

    def readmit(self) -> None:
        """Ejections that ran out end (the balancer notices at its next look)."""
        now = self.clock()
        ended = [name for name, until in self.ejected_until.items() if until <= now]
        for name in ended:
            del self.ejected_until[name]
        if ended:
            self.reset()

    def outcome(self, name: str, ok: bool) -> None:
        """Envoy's outlier detection, as OutlierEjection documents it."""
        if ok:
            self.successes[name] += 1
            self.consecutive[name] = 0
            return
        self.failures[name] += 1
        now = self.clock()
        if self.ejected_until.get(name, -math.inf) > now:
            return  # failures of requests sent before the ejection do not count twice
        self.consecutive[name] += 1
        if self.consecutive[name] < EJECTION.consecutive_failures:
            return
        ejected = sum(1 for until in self.ejected_until.values() if until > now)
        limit = max(1, math.floor(len(self.weights) * EJECTION.max_ejection_percent / 100))
        if ejected >= limit:
            return
        self.ejections[name] += 1
        self.consecutive[name] = 0
        self.ejected_until[name] = now + min(
            EJECTION.base_ejection * self.ejections[name], EJECTION.max_ejection
        )
        self.reset()

    def reset(self) -> None:
        """Something changed: nginx starts its current weights again from zero."""
        self.current = dict.fromkeys(self.weights, 0.0)

    def check_pick(self, got: str, healthy: list[str]) -> None:
        assert got in healthy

    def forget(self, name: str) -> None:
        for counter in (
            self.in_flight,
            self.picks,
            self.successes,
            self.failures,
            self.consecutive,
            self.ejections,
        ):
            counter.pop(name, None)
        self.ejected_until.pop(name, None)

    # -- rules ---------------------------------------------------------------------

    @rule(name=NAMES, weight=WEIGHTS)
    def add(self, name: str, weight: int) -> None:
        if name in self.weights:
            before = self.state()
            with pytest.raises(DuplicateNode):
                self.balancer.add(name, weight)
            assert self.state() == before
            return
        self.balancer.add(name, weight)
        self.weights[name] = weight
        self.generation[name] = self.generation.get(name, -1) + 1
        self.forget(name)
        self.reset()

    @rule(name=NAMES)
    def remove(self, name: str) -> None:
        if name not in self.weights:
            with pytest.raises(UnknownNode):
                self.balancer.remove(name)
            return
        self.balancer.remove(name)
        del self.weights[name]
        self.down.discard(name)
        self.forget(name)
        self.reset()

    @rule(name=NAMES, weight=WEIGHTS)
    def set_weight(self, name: str, weight: int) -> None:
        if name not in self.weights:
            with pytest.raises(UnknownNode):
                self.balancer.set_weight(name, weight)
            return
        self.balancer.set_weight(name, weight)
        self.weights[name] = weight
        self.reset()

    @rule(name=NAMES, up=st.booleans())
    def mark(self, name: str, up: bool) -> None:
        change = self.balancer.mark_up if up else self.balancer.mark_down
        if name not in self.weights:
            with pytest.raises(UnknownNode):
                change(name)
            return
        change(name)
        if up:
            self.down.discard(name)
            self.ejected_until.pop(name, None)  # mark_up also ends an ejection
            self.consecutive[name] = 0
        else:
            self.down.add(name)
        self.reset()

    def choose(self, lease: bool) -> str | None:
        healthy = self.healthy()
        if not healthy:
            with pytest.raises(NoBackendAvailable):
                self.balancer.lease() if lease else self.balancer.pick()
            self.no_backend += 1
            return None
        if lease:
            held = self.balancer.lease()
            got: str = held.backend
        else:
            got = self.balancer.pick()
        self.check_pick(got, healthy)
        self.picks[got] += 1
        if lease:
            self.in_flight[got] += 1
            self.held.append((held, got, self.generation[got]))
        return got

    @rule()
    def pick(self) -> None:
        self.choose(lease=False)

    @rule()
    def lease(self) -> None:
        self.choose(lease=True)

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), ok=st.sampled_from([True, False, None]))
    def release(self, data: st.DataObject, ok: bool | None) -> None:
        index = data.draw(st.integers(0, len(self.held) - 1))
        held, name, generation = self.held.pop(index)
        held.release(ok)
        if name in self.weights and self.generation[name] == generation:
            self.in_flight[name] -= 1
            if ok is not None:
                self.outcome(name, ok)

    @rule(name=NAMES, ok=st.booleans(), latency=st.sampled_from([None, 0.0, 0.01, 0.5]))
    def report(self, name: str, ok: bool, latency: float | None) -> None:
        if name not in self.weights:
            with pytest.raises(UnknownNode):
                self.balancer.report(name, ok, latency)
            return
        self.balancer.report(name, ok, latency)
        self.outcome(name, ok)

    @precondition(lambda self: bool(self.weights))
    @rule(data=st.data())
    def fail_in_a_row(self, data: st.DataObject) -> None:
        """Failures in a row on one backend: what ejects it."""
        name = data.draw(st.sampled_from(sorted(self.weights)))
        for _ in range(EJECTION.consecutive_failures):
            self.balancer.report(name, False)
            self.outcome(name, False)

    @rule(seconds=st.sampled_from([0.0, 0.5, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(backend=BAD_BACKENDS, weight=BAD_WEIGHTS, ok=BAD_OUTCOMES, name=NAMES)
    def refused(self, backend: Any, weight: Any, ok: Any, name: str) -> None:
        """A hostile backend, weight or outcome is refused and changes nothing."""
        before = self.state()
        with pytest.raises(REFUSED):
            self.balancer.add(backend)
        with pytest.raises(REFUSED):
            self.balancer.add(f"new-{name}", weight)
        if name in self.weights:
            with pytest.raises(REFUSED):
                self.balancer.set_weight(name, weight)
            with pytest.raises(REFUSED):
                self.balancer.report(name, ok)
        assert self.state() == before

    # -- invariants ----------------------------------------------------------------

    def state(self) -> Any:
        balancer = self.balancer
        return (balancer.backends, balancer.healthy(), balancer.stats())

    @invariant()
    def internal_invariants_hold(self) -> None:
        self.balancer._check()

    @invariant()
    def matches_the_model(self) -> None:
        balancer = self.balancer
        assert balancer.backends == tuple(self.weights)
        assert balancer.healthy() == tuple(self.healthy())
        stats = balancer.stats()
        assert stats.no_backend == self.no_backend
        now = self.clock()
        for name, weight in self.weights.items():
            backend = stats.backends[name]
            assert (backend.weight, backend.share) == (weight, weight)
            assert backend.in_flight == self.in_flight[name] == balancer.in_flight(name)
            assert backend.picks == self.picks[name]
            assert (backend.successes, backend.failures) == (
                self.successes[name],
                self.failures[name],
            )
            assert backend.down == (name in self.down)
            assert backend.ejected == (self.ejected_until.get(name, -math.inf) > now)
            assert backend.ejections == self.ejections[name]


class RoundRobinMachine(BalancerMachine):
    def build(self, backends: list[str]) -> Any:
        return RoundRobin(backends, clock=self.clock, ejection=EJECTION, panic_threshold=0)

    def check_pick(self, got: str, healthy: list[str]) -> None:
        """nginx's ngx_http_upstream_get_peer, step by step."""
        total = sum(self.weights[name] for name in healthy)
        for name in healthy:
            self.current[name] += self.weights[name]
        best = max(healthy, key=lambda name: self.current[name])  # the first on a tie
        self.current[best] -= total
        assert got == best
        assert sum(self.current[name] for name in healthy) == 0


class LeastConnectionsMachine(BalancerMachine):
    def build(self, backends: list[str]) -> Any:
        return LeastConnections(backends, clock=self.clock, ejection=EJECTION, panic_threshold=0)

    def check_pick(self, got: str, healthy: list[str]) -> None:
        assert got in healthy
        for other in healthy:  # in_flight / weight is least, compared exactly
            assert self.in_flight[got] * self.weights[other] <= (
                self.in_flight[other] * self.weights[got]
            )


class TwoChoicesMachine(BalancerMachine):
    def build(self, backends: list[str]) -> Any:
        return LeastConnections(
            backends,
            choices=2,
            rng=random.Random(13),
            clock=self.clock,
            ejection=EJECTION,
            panic_threshold=0,
        )


class PeakEwmaMachine(BalancerMachine):
    def build(self, backends: list[str]) -> Any:
        return PeakEwma(
            backends,
            rng=random.Random(13),
            clock=self.clock,
            ejection=EJECTION,
            panic_threshold=0,
        )


class FailoverMachine(RuleBasedStateMachine):
    """Two groups: picks go to a healthy backend of a group with a positive share."""

    def __init__(self) -> None:
        super().__init__()
        self.first = RoundRobin(["a", "b", "c"], ejection=NO_EJECTION, panic_threshold=0)
        self.second = LeastConnections(["x", "y"], ejection=NO_EJECTION, panic_threshold=0)
        self.groups = FailoverGroups([self.first, self.second], rng=random.Random(13))
        self.down: set[str] = set()

    @rule(name=st.sampled_from("abcxy"), up=st.booleans())
    def mark(self, name: str, up: bool) -> None:
        (self.groups.mark_up if up else self.groups.mark_down)(name)
        (self.down.discard if up else self.down.add)(name)

    @rule(name=st.sampled_from("abcxy"), ok=st.booleans())
    def report(self, name: str, ok: bool) -> None:
        self.groups.report(name, ok)

    @rule(lease=st.booleans())
    def pick(self, lease: bool) -> None:
        healthy = [name for name in "abcxy" if name not in self.down]
        if not healthy:
            with pytest.raises(NoBackendAvailable):
                self.groups.pick()
            return
        shares = self.groups.shares()
        if lease:
            with self.groups.lease() as got:
                pass
        else:
            got = self.groups.pick()
        assert got in healthy
        assert shares[0 if got in "abc" else 1] > 0

    @rule(backend=BAD_BACKENDS, weight=BAD_WEIGHTS)
    def refused(self, backend: Any, weight: Any) -> None:
        before = self.groups.stats()
        with pytest.raises(REFUSED):
            self.groups.add(backend)
        with pytest.raises(REFUSED):
            self.groups.add("new", weight)
        assert self.groups.stats() == before

    @invariant()
    def internal_invariants_hold(self) -> None:
        self.groups._check()
        assert self.groups.healthy() == tuple(n for n in "abcxy" if n not in self.down)


# Half the profile's examples (30 by default, 100 under ci), 30 steps each: five
# machines share the time budget.
SHORT = settings(max_examples=max(10, settings.default.max_examples // 2), stateful_step_count=30)

TestRoundRobinMachine = RoundRobinMachine.TestCase
TestLeastConnectionsMachine = LeastConnectionsMachine.TestCase
TestTwoChoicesMachine = TwoChoicesMachine.TestCase
TestPeakEwmaMachine = PeakEwmaMachine.TestCase
TestFailoverMachine = FailoverMachine.TestCase
for case in (
    TestRoundRobinMachine,
    TestLeastConnectionsMachine,
    TestTwoChoicesMachine,
    TestPeakEwmaMachine,
    TestFailoverMachine,
):
    case.settings = SHORT
del case

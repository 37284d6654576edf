"""LeastConnections: exact least load per weight, and the power of two choices."""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.balancing import Lease, LeastConnections, OutlierEjection
from scalekit.errors import ArgumentTypeError, ConfigurationError, NoBackendAvailable
from scalekit.testing import FakeClock

NO_EJECTION = OutlierEjection(consecutive_failures=10**9)
NAMES = ["a", "b", "c", "d", "e"]


# -- exact ----------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("lease"), st.just(0)),
        st.tuples(st.just("lease"), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 10**6)),
        st.tuples(st.just("release"), st.integers(0, 10**6)),
        st.tuples(st.just("pick"), st.just(0)),
        st.tuples(st.sampled_from(["down", "up", "remove", "add"]), st.integers(0, 4)),
        st.tuples(st.just("weight"), st.integers(0, 4 * 4 - 1)),
    ),
    max_size=60,
)
WEIGHT_CHOICES = [1, 2, 3, 0.5]


@given(
    weights=st.lists(st.sampled_from(WEIGHT_CHOICES), min_size=1, max_size=5),
    ops=OPS,
    outcomes=st.randoms(use_true_random=False),
)
@settings(max_examples=80)
def test_every_lease_goes_to_a_least_loaded_backend(
    weights: list[float], ops: list[tuple[str, int]], outcomes: random.Random
) -> None:
    """Against a brute-force model: loads are in_flight / weight, as fractions."""
    model_weights = {NAMES[i]: w for i, w in enumerate(weights)}
    balancer = LeastConnections(list(model_weights), weights=model_weights, ejection=NO_EJECTION)
    in_flight = dict.fromkeys(model_weights, 0)
    down: set[str] = set()
    held: list[tuple[Lease[str], int]] = []  # with the generation of the record leased
    generation = dict.fromkeys(model_weights, 0)

    def eligible() -> list[str]:
        return [b for b in model_weights if b not in down]

    def load(backend: str) -> Fraction:
        return Fraction(in_flight[backend]) / Fraction(model_weights[backend])

    for op, arg in ops:
        name = NAMES[arg % len(NAMES)]
        if op in ("lease", "pick"):
            if not eligible():
                with pytest.raises(NoBackendAvailable):
                    balancer.lease() if op == "lease" else balancer.pick()
                continue
            least = min(load(b) for b in eligible())
            if op == "pick":
                assert load(balancer.pick()) == least
                continue
            lease = balancer.lease()
            assert lease.backend in eligible()
            assert load(lease.backend) == least, (lease.backend, in_flight, model_weights)
            in_flight[lease.backend] += 1
            held.append((lease, generation[lease.backend]))
        elif op == "release" and held:
            lease, gen = held.pop(arg % len(held))
            lease.release(outcomes.choice([True, False, None]))
            if lease.backend in model_weights and generation[lease.backend] == gen:
                in_flight[lease.backend] -= 1
        elif op == "down" and name in model_weights:
            balancer.mark_down(name)
            down.add(name)
        elif op == "up" and name in model_weights:
            balancer.mark_up(name)
            down.discard(name)
        elif op == "remove" and name in model_weights:
            balancer.remove(name)
            del model_weights[name], in_flight[name]
            down.discard(name)
        elif op == "add" and name not in model_weights:
            weight = WEIGHT_CHOICES[arg % len(WEIGHT_CHOICES)]
            balancer.add(name, weight)
            model_weights[name], in_flight[name] = weight, 0
            generation[name] = generation.get(name, 0) + 1
        elif op == "weight" and name in model_weights:
            weight = WEIGHT_CHOICES[arg // len(NAMES) % len(WEIGHT_CHOICES)]
            balancer.set_weight(name, weight)
            model_weights[name] = weight
        assert {b: balancer.in_flight(b) for b in balancer.backends} == in_flight
        assert balancer.healthy() == tuple(eligible())

    for lease, _ in held:
        lease.release()
    assert balancer.stats().in_flight == 0
    # equal load again: one round of picks visits every eligible backend once
    assert sorted(balancer.pick() for _ in eligible()) == sorted(eligible())


def test_ties_go_round_robin() -> None:
    balancer = LeastConnections(["a", "b", "c", "d"])
    assert [balancer.pick() for _ in range(12)] == list("abcd" * 3)
    held = [balancer.lease() for _ in range(4)]  # one each: equal load again
    assert sorted(lease.backend for lease in held) == ["a", "b", "c", "d"]
    for _ in range(5):
        assert sorted(balancer.pick() for _ in range(4)) == ["a", "b", "c", "d"]


def test_a_release_puts_a_backend_behind_its_equals() -> None:
    balancer = LeastConnections(["a", "b", "c"])
    lease = balancer.lease()
    assert lease.backend == "a"
    assert [balancer.pick() for _ in range(4)] == ["b", "c", "b", "c"]  # a is busier
    lease.release()
    assert sorted(balancer.pick() for _ in range(3)) == ["a", "b", "c"]


def test_leases_fill_the_least_loaded_first() -> None:
    balancer = LeastConnections(["a", "b", "c", "d"], ejection=NO_EJECTION)
    held = [balancer.lease() for _ in range(8)]
    assert Counter(lease.backend for lease in held) == dict.fromkeys("abcd", 2)
    for lease in held:
        if lease.backend == "c":
            lease.release(False)
    assert [balancer.lease().backend for _ in range(2)] == ["c", "c"]
    assert {b: balancer.in_flight(b) for b in "abcd"} == dict.fromkeys("abcd", 2)


def test_weights_are_capacities() -> None:
    balancer = LeastConnections(["big", "small"], weights={"big": 3, "small": 1})
    held = [balancer.lease() for _ in range(40)]
    assert Counter(lease.backend for lease in held) == {"big": 30, "small": 10}
    balancer.set_weight("small", 3)  # room for 20 more before big gets any
    more = [balancer.lease().backend for _ in range(20)]
    assert more == ["small"] * 20
    assert balancer.in_flight("big") == balancer.in_flight("small") == 30


def test_plain_picks_do_not_load_anything() -> None:
    balancer = LeastConnections(["a", "b"])
    held = balancer.lease()
    assert held.backend == "a"
    assert [balancer.pick() for _ in range(10)] == ["b"] * 10
    assert (balancer.in_flight("a"), balancer.in_flight("b")) == (1, 0)
    assert balancer.stats().picks == 11


def test_readmitted_backend_is_least_loaded_again() -> None:
    clock = FakeClock()
    balancer = LeastConnections(["a", "b"], clock=clock, ejection=OutlierEjection(1))
    balancer.report("a", False)
    held = [balancer.lease() for _ in range(3)]
    assert [lease.backend for lease in held] == ["b"] * 3
    clock.advance(30.0)
    assert [balancer.lease().backend for _ in range(3)] == ["a"] * 3


# -- power of two choices -------------------------------------------------------


@pytest.mark.parametrize("choices", [0, 1, 3, -2, 10**400])
def test_choices_is_none_or_two(choices: Any) -> None:
    with pytest.raises(ConfigurationError, match="choices") as caught:
        LeastConnections(["a", "b"], choices=choices)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("choices", ["2", True, 2.0, math.nan])
def test_choices_of_another_type_is_refused(choices: Any) -> None:
    with pytest.raises(ArgumentTypeError, match="choices") as caught:
        LeastConnections(["a", "b"], choices=choices)
    assert isinstance(caught.value, TypeError)


def test_two_choices_with_one_backend_returns_it() -> None:
    balancer = LeastConnections(["only"], choices=2, rng=random.Random(0))
    assert [balancer.pick() for _ in range(5)] == ["only"] * 5
    held = [balancer.lease() for _ in range(3)]
    assert {lease.backend for lease in held} == {"only"}
    assert balancer.in_flight("only") == 3
    balancer.add("other")
    balancer.mark_down("other")
    assert balancer.lease().backend == "only"


def test_two_choices_compares_two_distinct_backends() -> None:
    """With two backends both are always drawn, so the less loaded always wins."""
    balancer = LeastConnections(["a", "b"], choices=2, rng=random.Random(3), ejection=NO_EJECTION)
    held = [balancer.lease() for _ in range(100)]
    assert abs(balancer.in_flight("a") - balancer.in_flight("b")) <= 1
    for lease in held:
        if lease.backend == "a":
            lease.release()
    assert [balancer.pick() for _ in range(50)] == ["a"] * 50


def test_two_choices_never_picks_the_most_loaded() -> None:
    balancer = LeastConnections(list("abcd"), choices=2, rng=random.Random(11))
    loads = {"a": 0, "b": 1, "c": 2, "d": 3}
    for backend, load in loads.items():
        others = [b for b in loads if b != backend]
        for b in others:
            balancer.mark_down(b)
        for _ in range(load):
            balancer.lease()
        for b in others:
            balancer.mark_up(b)
    assert {b: balancer.in_flight(b) for b in "abcd"} == loads
    counts = Counter(balancer.pick() for _ in range(1200))
    assert counts["d"] == 0  # it loses to whichever it is drawn with
    assert 480 < counts["a"] < 720  # a wins whenever drawn: 1 - 3/6 = 1/2 of the time
    assert 280 < counts["b"] < 520  # 2/6
    assert 90 < counts["c"] < 320  # 1/6


def run_seeded(seed: int) -> list[str]:
    balancer = LeastConnections(
        [f"n{i}" for i in range(8)], choices=2, rng=random.Random(seed), ejection=NO_EJECTION
    )
    chosen, held = [], []
    for i in range(300):
        lease = balancer.lease()
        chosen.append(lease.backend)
        held.append(lease)
        if i % 3:
            held.pop(i * 7 % len(held)).release(i % 5 != 0)
    return chosen


def test_two_choices_is_deterministic_with_a_seeded_rng() -> None:
    assert run_seeded(42) == run_seeded(42)
    assert run_seeded(42) != run_seeded(43)
    assert len(set(run_seeded(42))) == 8


def test_two_choices_keeps_the_load_even() -> None:
    balancer = LeastConnections(
        [f"n{i}" for i in range(10)], choices=2, rng=random.Random(5), ejection=NO_EJECTION
    )
    held = [balancer.lease() for _ in range(1000)]
    counts = Counter(lease.backend for lease in held)
    assert max(counts.values()) - min(counts.values()) <= 6  # expected 100 each
    assert balancer.stats().in_flight == 1000

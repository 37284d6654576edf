"""RoundRobin: nginx's smooth weighted round robin, exactly."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.balancing import OutlierEjection, RoundRobin
from scalekit.errors import ConfigurationError, DuplicateNode, UnknownNode
from scalekit.testing import FakeClock


def run(balancer: RoundRobin[str], n: int) -> str:
    return "".join(balancer.pick() for _ in range(n))


def reference(weights: dict[str, float]) -> list[str]:
    """nginx's ngx_http_upstream_get_peer, written out plainly, for 3 rounds."""
    current = dict.fromkeys(weights, 0.0)
    total = sum(weights.values())
    chosen = []
    for _ in range(3 * len(weights) * 7):
        for name, weight in weights.items():
            current[name] += weight
        best = max(current, key=lambda name: current[name])  # the first on a tie
        current[best] -= total
        chosen.append(best)
    return chosen


def test_nginx_sequence_for_5_1_1() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5})
    assert run(balancer, 21) == "aabacaa" * 3


def test_leases_follow_the_same_sequence() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5, "b": 1, "c": 1})
    chosen, held = "", []
    for i in range(21):
        if i % 3 == 0:
            held.append(balancer.lease())  # never released: round robin ignores load
            chosen += held[-1].backend
        else:
            with balancer.lease() as backend:
                chosen += backend
    assert chosen == "aabacaa" * 3
    assert balancer.stats().in_flight == 7


def test_equal_weights_rotate_in_order() -> None:
    balancer = RoundRobin(["a", "b", "c", "d"])
    assert run(balancer, 12) == "abcd" * 3
    assert run(RoundRobin(["x", "y", "z"], weights={"x": 2.5, "y": 2.5, "z": 2.5}), 6) == "xyzxyz"


def test_the_key_does_not_matter() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5})
    assert "".join(balancer.pick(key) for key in ("k", 1, None, "k", b"k", "k", 2.0)) == "aabacaa"


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 5, "b": 1, "c": 1},
        {"a": 1, "b": 2, "c": 3, "d": 4},
        {"a": 0.5, "b": 1.5},
        {"a": 10, "b": 1},
        {"a": 3, "b": 3, "c": 1},
    ],
)
def test_matches_nginx_reference(weights: dict[str, float]) -> None:
    balancer = RoundRobin(list(weights), weights=weights)
    assert list(run(balancer, len(reference(weights)))) == reference(weights)


def deviation(weights: dict[str, float], n: int) -> float:
    """The largest ``|count - N * w / W|`` over every backend and every prefix N <= n."""
    balancer = RoundRobin(list(weights), weights=weights)
    total = sum(weights.values())
    counts = dict.fromkeys(weights, 0)
    worst = 0.0
    for picked in range(1, n + 1):
        counts[balancer.pick()] += 1
        for name, weight in weights.items():
            worst = max(worst, abs(counts[name] - picked * weight / total))
    return worst


def named(weights: list[float]) -> dict[str, float]:
    return {f"n{i}": w for i, w in enumerate(weights)}


FLOATS = st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False)


# The promise holds for up to 3 backends (checked for weights up to 300); from 4 on
# smooth round robin strays further than 1: see below.
@given(weights=st.lists(st.integers(1, 40), min_size=1, max_size=3), n=st.integers(1, 150))
@settings(max_examples=60)
def test_every_prefix_is_within_one_of_its_share_integer_weights(
    weights: list[int], n: int
) -> None:
    assert deviation(named(weights), n) <= 1 + 1e-9


@given(weights=st.lists(FLOATS, min_size=1, max_size=3), n=st.integers(1, 150))
@settings(max_examples=60)
def test_every_prefix_is_within_one_of_its_share_float_weights(
    weights: list[float], n: int
) -> None:
    assert deviation(named(weights), n) <= 1 + 1e-9


# The spec asked for "within 1 of N*w/W for any prefix" from nginx's algorithm; that
# holds up to 3 backends (above) but not beyond, and RoundRobin keeps nginx's picks
# (checked against the reference below) rather than nginx's name on another schedule.
@pytest.mark.parametrize(
    ("weights", "n", "worst"),
    [([1, 1, 1, 5, 5, 5], 11, 19 / 18), ([1, 1, 1, 11, 11], 16, 1 + 1 / 25)],
)
def test_nginx_strays_beyond_one_from_four_backends(
    weights: list[int], n: int, worst: float
) -> None:
    assert deviation(named(weights), n) == pytest.approx(worst)
    assert deviation(named(weights), n - 1) < 1


@given(weights=st.lists(st.integers(1, 20), min_size=1, max_size=8))
@settings(max_examples=60)
def test_matches_nginx_reference_for_any_integer_weights(weights: list[int]) -> None:
    weighted = named(weights)
    expected = reference(weighted)
    balancer = RoundRobin(list(weighted), weights=weighted)
    assert [balancer.pick() for _ in expected] == expected


@given(weight=FLOATS, n=st.integers(1, 8))
@settings(max_examples=30)
def test_any_equal_weights_rotate_in_order(weight: float, n: int) -> None:
    """Exactly, even where float scores would drift (0.1 + 0.1 + 0.1 != 0.3)."""
    weighted = named([weight] * n)
    balancer = RoundRobin(list(weighted), weights=weighted)
    assert [balancer.pick() for _ in range(5 * n)] == list(weighted) * 5


def test_scores_restart_when_a_weight_changes() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5})
    assert run(balancer, 3) == "aab"
    balancer.set_weight("a", 5)  # even to the same weight
    assert run(balancer, 7) == "aabacaa"
    assert run(balancer, 3) == "aab"
    balancer.set_weight("c", 5)  # 5, 1, 5 from zero scores
    assert run(balancer, 11) == "".join(reference({"a": 5, "b": 1, "c": 5})[:11])


def test_scores_restart_when_the_backends_change() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5})
    assert run(balancer, 2) == "aa"
    balancer.add("d")
    assert run(balancer, 8) == run(RoundRobin(["a", "b", "c", "d"], weights={"a": 5}), 8)
    balancer.remove("d")
    assert run(balancer, 7) == "aabacaa"
    uniform = RoundRobin(["a", "b", "c"])
    assert run(uniform, 2) == "ab"
    uniform.remove("c")
    uniform.add("c")
    assert run(uniform, 3) == "abc"


def test_scores_restart_when_eligibility_changes() -> None:
    clock = FakeClock()
    balancer = RoundRobin(
        ["a", "b", "c"], weights={"a": 5}, clock=clock, ejection=OutlierEjection(1)
    )
    assert run(balancer, 4) == "aaba"
    balancer.mark_down("b")
    assert run(balancer, 6) == run(RoundRobin(["a", "c"], weights={"a": 5}), 6)
    balancer.mark_up("b")
    assert run(balancer, 7) == "aabacaa"
    assert run(balancer, 1) == "a"
    balancer.report("c", False)  # ejected
    assert run(balancer, 6) == run(RoundRobin(["a", "b"], weights={"a": 5}), 6)
    clock.advance(30.0)  # re-admitted
    assert run(balancer, 7) == "aabacaa"


def test_rotation_restarts_when_eligibility_changes() -> None:
    balancer = RoundRobin(["a", "b", "c", "d"])
    assert run(balancer, 2) == "ab"
    balancer.mark_down("b")
    assert run(balancer, 6) == "acdacd"
    balancer.mark_up("b")
    assert run(balancer, 4) == "abcd"


def test_refused_changes_do_not_restart_the_scores() -> None:
    balancer = RoundRobin(["a", "b", "c"], weights={"a": 5})
    assert run(balancer, 3) == "aab"
    with pytest.raises(DuplicateNode):
        balancer.add("a")
    with pytest.raises(ConfigurationError):
        balancer.set_weight("b", 0)
    with pytest.raises(ConfigurationError):
        balancer.add("d", -1)
    with pytest.raises(UnknownNode):
        balancer.remove("zzz")
    with pytest.raises(UnknownNode):
        balancer.mark_down("zzz")
    assert run(balancer, 4) == "acaa"


def test_weights_split_a_long_run_exactly() -> None:
    weights = {"a": 1, "b": 2, "c": 3, "d": 4}
    balancer = RoundRobin(list(weights), weights=weights)
    counts = Counter(run(balancer, 1000))
    assert counts == {"a": 100, "b": 200, "c": 300, "d": 400}
    assert {b: s.picks for b, s in balancer.stats().backends.items()} == counts


@given(
    weights=st.lists(st.sampled_from([1, 2, 3, 5, 0.5, 7.25]), min_size=1, max_size=40),
    script=st.lists(
        st.tuples(st.sampled_from(["pick", "down", "up", "weight"]), st.integers(0, 39)),
        max_size=60,
    ),
)
@settings(max_examples=80)
def test_matches_nginx_reference_through_changes(
    weights: list[float], script: list[tuple[str, int]]
) -> None:
    """Many backends sharing a few weights (the per-weight shortcut), with the
    eligible set and the weights changing between runs of picks."""
    weighted = named(weights)
    names = list(weighted)
    balancer = RoundRobin(names, weights=weighted)
    down: set[str] = set()
    current = dict.fromkeys(names, 0.0)
    for action, index in script:
        name = names[index % len(names)]
        if action == "pick":
            live = {n: weighted[n] for n in names if n not in down}
            if not live:
                continue
            for _ in range(index + 1):
                for n, w in live.items():
                    current[n] += w
                best = max(live, key=current.__getitem__)
                current[best] -= sum(live.values())
                assert balancer.pick() == best
            continue
        if action == "down":
            if len(down) >= len(names) // 2:
                continue  # would reach panic mode: not this test's subject
            balancer.mark_down(name)
            down.add(name)
        elif action == "up":
            balancer.mark_up(name)
            down.discard(name)
        else:
            weighted[name] = float(1 + index % 4)
            balancer.set_weight(name, weighted[name])
        current = dict.fromkeys(names, 0.0)  # any change restarts the scores

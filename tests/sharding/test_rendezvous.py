"""RendezvousHash: weighted balance, moves only to or from the changed node, plans."""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, DuplicateNode, NoNodeAvailable, UnknownNode
from scalekit.hashing import murmur3_64
from scalekit.sharding._base import ShardingScheme
from scalekit.sharding._plan import ReshardPlan
from scalekit.sharding._rendezvous import RendezvousHash

RNG = random.Random(21)
KEYS = [f"user:{RNG.getrandbits(64):x}" for _ in range(200_000)]
SAMPLE = KEYS[:20_000]
TEN = [f"node-{i}" for i in range(10)]
UNEQUAL = dict(zip(TEN, [1, 2, 3, 1, 2, 3, 1, 2, 3, 5], strict=True))

weights = st.floats(0.25, 8.0, allow_nan=False).map(lambda w: round(w, 2))


def owners(sharder: ShardingScheme[str, Any], keys: list[str] = SAMPLE) -> list[str]:
    return [sharder.node_for(key) for key in keys]


def snapshot(sharder: RendezvousHash[str]) -> tuple[object, ...]:
    return (
        sharder.nodes,
        [sharder.weight_of(node) for node in sharder.nodes],
        sharder._state,
        owners(sharder, KEYS[:500]),
    )


def within(fraction: float, keys: int = len(SAMPLE)) -> float:
    """Five standard deviations of the share of ``keys`` random keys that flow."""
    return 5 * math.sqrt(fraction * (1 - fraction) / keys)


def reference_owner(nodes: dict[str, float], key: str) -> str:
    """The definition, written plainly: the highest -w / ln(u) wins."""

    def score(node: str) -> float:
        u = ((murmur3_64(f"{node}:{key}") >> 12) + 0.5) / 2**52
        return -nodes[node] / math.log(u)

    return max(sorted(nodes), key=score)


@pytest.mark.parametrize("table", [dict.fromkeys(TEN, 1), UNEQUAL])
def test_node_for_is_the_highest_score(table: dict[str, float]) -> None:
    sharder = RendezvousHash(table)
    for key in KEYS[:2000]:
        expected = reference_owner(table, key)
        assert sharder.node_for(key) == expected
        assert sharder._owner(sharder._state, key.encode()) == expected


def test_balance_at_10_nodes() -> None:
    counts = Counter(owners(RendezvousHash(TEN), KEYS))
    assert set(counts) == set(TEN)
    assert max(counts.values()) / (len(KEYS) / 10) <= 1.03


def test_weighted_balance() -> None:
    counts = Counter(owners(RendezvousHash(UNEQUAL), KEYS[:100_000]))
    total = sum(UNEQUAL.values())
    for node, weight in UNEQUAL.items():
        assert counts[node] / 100_000 == pytest.approx(weight / total, rel=0.05)


def test_adding_a_node_moves_the_ideal_share_only_to_it() -> None:
    sharder = RendezvousHash(TEN)
    before = owners(sharder, KEYS)
    sharder.add("node-10")
    after = owners(sharder, KEYS)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert {a for _, a in moved} == {"node-10"}
    assert len(moved) / len(KEYS) <= 1.05 / 11


@given(
    table=st.lists(weights, min_size=2, max_size=8),
    added=weights,
    victim=st.integers(0, 7),
)
@settings(max_examples=25)
def test_no_key_moves_between_two_nodes_that_stay(
    table: list[float], added: float, victim: int
) -> None:
    nodes = {f"n{i}": weight for i, weight in enumerate(table)}
    sharder = RendezvousHash(nodes)
    keys = SAMPLE[:1000]
    before = owners(sharder, keys)
    grown = sharder.copy()
    grown.add("new", added)
    for b, a in zip(before, owners(grown, keys), strict=True):
        assert a in (b, "new")
    gone = f"n{victim % len(table)}"
    shrunk = sharder.copy()
    shrunk.remove(gone)
    for b, a in zip(before, owners(shrunk, keys), strict=True):
        assert a == b or b == gone


@pytest.mark.parametrize("table", [dict.fromkeys(TEN, 1), UNEQUAL])
@pytest.mark.parametrize("change", ["add", "remove", "heavier", "lighter"])
def test_plans_are_exact_and_their_fractions_are_the_expected_flows(
    table: dict[str, float], change: str
) -> None:
    sharder = RendezvousHash(table)
    if change == "add":
        plan = sharder.plan_add("new", 4)
    elif change == "remove":
        plan = sharder.plan_remove("node-9")
    else:
        plan = sharder.plan_weight("node-2", 9 if change == "heavier" else 0.5)
    before, after = owners(sharder), owners(plan.after)
    observed = Counter((b, a) for b, a in zip(before, after, strict=True) if b != a)
    for key, b, a in zip(SAMPLE, before, after, strict=True):
        assert plan.move_for(key) == (None if b == a else (b, a))
    assert set(observed) <= {(move.source, move.target) for move in plan.moves}
    moved = sum(observed.values()) / len(SAMPLE)
    assert moved == pytest.approx(plan.moved_fraction, abs=within(plan.moved_fraction))
    for move in plan.moves:  # each flow is an expectation; 20,000 keys come close
        flow = observed[move.source, move.target] / len(SAMPLE)
        assert flow == pytest.approx(move.fraction, abs=within(move.fraction))


def test_plan_fractions_follow_the_formulas() -> None:
    sharder = RendezvousHash({"a": 1, "b": 3})
    add = sharder.plan_add("c", 4)  # W: 4 -> 8; each node gives share * 4/8
    assert {m.source: m.fraction for m in add.moves} == pytest.approx({"a": 1 / 8, "b": 3 / 8})
    remove = sharder.plan_remove("a")  # a's quarter all goes to b
    assert [(m.source, m.target) for m in remove.moves] == [("a", "b")]
    assert remove.moves[0].fraction == pytest.approx(0.25)
    assert add.moved_fraction == pytest.approx(add.ideal_fraction)
    assert remove.moved_fraction == pytest.approx(remove.ideal_fraction)


def test_a_plan_between_placements_that_differ_in_two_nodes_has_no_moves() -> None:
    before = RendezvousHash(["a", "b", "c"])
    after = RendezvousHash(["a", "b", "d"])
    plan = ReshardPlan.between(before, after)
    assert plan.moves == ()
    assert plan.move_for("k") in (None, (before.node_for("k"), after.node_for("k")))
    assert ReshardPlan.between(before, before.copy()).moves == ()


def test_plans_from_and_to_a_single_node_move_nothing() -> None:
    assert RendezvousHash[str]().plan_add("a").moves == ()
    assert RendezvousHash(["a"]).plan_remove("a").moves == ()


@given(key=st.text(max_size=30), n=st.integers(1, 10), heavy=st.booleans())
def test_nodes_for_gives_n_distinct_nodes_owner_first(key: str, n: int, heavy: bool) -> None:
    sharder = RendezvousHash(UNEQUAL if heavy else TEN)
    chosen = sharder.nodes_for(key, n)
    assert len(chosen) == n
    assert len(set(chosen)) == n
    assert chosen[0] == sharder.node_for(key)
    assert sharder.nodes_for(key, 10)[:n] == chosen


def test_adding_a_node_inserts_it_into_preference_lists() -> None:
    sharder = RendezvousHash(UNEQUAL)
    grown = sharder.copy()
    grown.add("new", 2)
    for key in SAMPLE[:2000]:
        old, new = sharder.nodes_for(key, 10), grown.nodes_for(key, 11)
        assert [node for node in new if node != "new"] == old


def test_insertion_order_does_not_matter() -> None:
    forward, backward = RendezvousHash(UNEQUAL), RendezvousHash(dict(reversed(UNEQUAL.items())))
    assert owners(forward, SAMPLE[:2000]) == owners(backward, SAMPLE[:2000])


def test_no_nodes_and_too_many_nodes() -> None:
    sharder: RendezvousHash[str] = RendezvousHash()
    with pytest.raises(NoNodeAvailable):
        sharder.node_for("k")
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 1)
    sharder.add("a")
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 2)


@pytest.mark.parametrize("weight", [0, -1, math.inf])
def test_bad_weights_are_refused_and_change_nothing(weight: float) -> None:
    sharder = RendezvousHash(UNEQUAL)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError, match="weight"):
        sharder.add("x", weight)
    with pytest.raises(ConfigurationError, match="weight"):
        sharder.set_weight("node-1", weight)
    assert snapshot(sharder) == before


def test_duplicate_unknown_and_clashing_nodes_are_refused() -> None:
    sharder: RendezvousHash[object] = RendezvousHash(["1", "2"])
    before = snapshot(sharder)  # type: ignore[arg-type]
    with pytest.raises(DuplicateNode):
        sharder.add("2")
    with pytest.raises(DuplicateNode, match="both named '1'"):
        sharder.add(1)  # a different node, but the same name: they would always tie
    with pytest.raises(UnknownNode):
        sharder.remove("3")
    with pytest.raises(ConfigurationError, match="memory address"):
        sharder.add(object())
    assert snapshot(sharder) == before  # type: ignore[arg-type]


def test_shares_copies_and_pickles() -> None:
    sharder = RendezvousHash({"a": 1, "b": 3})
    assert sharder._shares(sharder._state) == {"a": 0.25, "b": 0.75}
    clone = pickle.loads(pickle.dumps(sharder))
    assert owners(clone, SAMPLE[:500]) == owners(sharder, SAMPLE[:500])
    twin = sharder.copy()
    twin.add("c")
    assert sharder.nodes == ("a", "b")

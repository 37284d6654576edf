"""MaglevHash: the paper's table, weighted turns, balance, exact slot plans."""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import (
    ConfigurationError,
    DuplicateNode,
    NoNodeAvailable,
    UnknownNode,
)
from scalekit.hashing import murmur3_64
from scalekit.sharding import _maglev
from scalekit.sharding._base import ShardingScheme
from scalekit.sharding._jump import _remix
from scalekit.sharding._maglev import DEFAULT_TABLE_SIZE, MaglevHash, _is_prime

RNG = random.Random(22)
KEYS = [f"user:{RNG.getrandbits(64):x}" for _ in range(200_000)]
SAMPLE = KEYS[:20_000]
TEN = [f"node-{i}" for i in range(10)]
UNEQUAL = dict(zip(TEN, [1, 2, 3, 1, 2, 3, 1, 2, 3, 5], strict=True))
SMALL = 251  # a prime table small enough to build in well under a millisecond

weights = st.floats(0.25, 8.0, allow_nan=False).map(lambda w: round(w, 2))


def owners(sharder: ShardingScheme[str, Any], keys: list[str] = SAMPLE) -> list[str]:
    return [sharder.node_for(key) for key in keys]


def snapshot(sharder: MaglevHash[str]) -> tuple[object, ...]:
    return (
        sharder.nodes,
        [sharder.weight_of(node) for node in sharder.nodes],
        sharder._state,
        owners(sharder, KEYS[:500]),
    )


def paper_table(nodes: list[str], size: int) -> list[str]:
    """Pseudocode 1 of Eisenbud et al. (2016), written as plainly as it is there."""
    nodes = sorted(nodes)
    permutation = []
    for name in nodes:
        offset = murmur3_64(name, 0x6D61676C) % size
        skip = murmur3_64(name, 0x736B6970) % (size - 1) + 1
        permutation.append([(offset + j * skip) % size for j in range(size)])
    following = [0] * len(nodes)
    entry: list[str | None] = [None] * size
    filled = 0
    while True:
        for i in range(len(nodes)):
            c = permutation[i][following[i]]
            while entry[c] is not None:
                following[i] += 1
                c = permutation[i][following[i]]
            entry[c] = nodes[i]
            following[i] += 1
            filled += 1
            if filled == size:
                return [node for node in entry if node is not None]


@pytest.mark.parametrize("count", [1, 3, 10])
def test_equal_weights_give_the_papers_table(count: int) -> None:
    nodes = TEN[:count]
    sharder = MaglevHash(nodes, table_size=SMALL)
    table = paper_table(nodes, SMALL)
    assert list(sharder._state.entries) == table
    for key in SAMPLE[:500]:
        assert sharder.node_for(key) == table[murmur3_64(key) % SMALL]
        assert sharder.table_index(key) == murmur3_64(key) % SMALL
        assert sharder._owner(sharder._state, key.encode()) == sharder.node_for(key)


@pytest.mark.parametrize("size", [4, 100, 65536, 65537 * 3])
def test_table_size_must_be_prime(size: int) -> None:
    with pytest.raises(ConfigurationError, match="prime"):
        MaglevHash(table_size=size)


@pytest.mark.parametrize("size", [0, 1, -7, 2**61 - 1, 2**61 + 1, 10**400])
def test_table_size_must_be_in_range(size: int) -> None:
    with pytest.raises(ConfigurationError, match="table_size must be in"):
        MaglevHash(table_size=size)


@pytest.mark.parametrize("size", [True, 2.5, "251", None, float("nan"), float("inf")])
def test_table_size_must_be_an_int(size: object) -> None:
    with pytest.raises(TypeError, match="table_size must be an int"):
        MaglevHash(table_size=size)  # type: ignore[arg-type]


def test_is_prime() -> None:
    by_division = [n for n in range(3000) if n > 1 and all(n % d for d in range(2, n))]
    assert [n for n in range(3000) if _is_prime(n)] == by_division
    assert all(_is_prime(n) for n in (65537, 2**61 - 1, 1_000_000_007))
    assert not _is_prime(3215031751)  # a strong pseudoprime to bases 2, 3, 5, 7


def test_a_table_needs_an_entry_per_node() -> None:
    sharder = MaglevHash(["a", "b", "c"], table_size=3)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError, match="cannot hold 4 nodes"):
        sharder.add("d")
    assert snapshot(sharder) == before


def test_balance_at_10_nodes() -> None:
    sharder = MaglevHash(TEN)
    assert sharder.table_size == DEFAULT_TABLE_SIZE
    entries = [sharder.entries_of(node) for node in TEN]
    assert max(entries) - min(entries) <= 1
    counts = Counter(owners(sharder, KEYS))
    assert max(counts.values()) / (len(KEYS) / 10) <= 1.03
    shares = sharder._shares(sharder._state)
    assert sum(shares.values()) == pytest.approx(1)
    assert shares["node-0"] == entries[0] / DEFAULT_TABLE_SIZE


@given(table=st.lists(weights, min_size=1, max_size=12), size=st.sampled_from([251, 1021, 4099]))
@settings(max_examples=30)
def test_nodes_hold_entries_in_proportion_to_weight(table: list[float], size: int) -> None:
    nodes = {f"n{i}": weight for i, weight in enumerate(table)}
    sharder = MaglevHash(nodes, table_size=size)
    total = sum(table)
    for node, weight in nodes.items():
        # each node is within a turn or two of its share, plus its part of the
        # last round's rounding (see the class docstring)
        slack = 2 + len(nodes) * weight / total
        assert abs(sharder.entries_of(node) - size * weight / total) <= slack


def test_weighted_keys_follow_the_weights() -> None:
    counts = Counter(owners(MaglevHash(UNEQUAL), KEYS[:100_000]))
    total = sum(UNEQUAL.values())
    for node, weight in UNEQUAL.items():
        assert counts[node] / 100_000 == pytest.approx(weight / total, rel=0.05)


def test_adding_a_node_moves_little_more_than_the_ideal() -> None:
    sharder = MaglevHash(TEN)
    before = owners(sharder, KEYS)
    plan = sharder.plan_add("node-10")
    after = owners(plan.after, KEYS)
    moved = sum(b != a for b, a in zip(before, after, strict=True)) / len(KEYS)
    assert moved <= 1.25 / 11
    assert plan.moved_fraction <= 1.25 / 11
    assert plan.moved_fraction == pytest.approx(moved, abs=0.005)


@pytest.mark.parametrize(
    "change", ["add", "remove", "heavier", "add-weighted", "remove-from-weighted"]
)
def test_plans_are_exact_to_the_table_index(change: str) -> None:
    sharder = MaglevHash(UNEQUAL if change.endswith("weighted") else TEN)
    if change.startswith("add"):
        plan = sharder.plan_add("new", 3 if change == "add-weighted" else 1)
    elif change.startswith("remove"):
        plan = sharder.plan_remove("node-4")
    else:
        plan = sharder.plan_weight("node-4", 2.5)
    old, new = sharder._state.entries, plan.after._state.entries
    # the moves list every changed entry once, and nothing else
    slots = {slot: move for move in plan.moves for slot in move.slots}
    assert sum(len(move.slots) for move in plan.moves) == len(slots)
    assert set(slots) == {i for i in range(len(old)) if old[i] != new[i]}
    for move in plan.moves:
        assert move.fraction == len(move.slots) / DEFAULT_TABLE_SIZE
        assert all(old[s] == move.source and new[s] == move.target for s in move.slots)
    # and every key that moves is in the move's slots
    before, after = owners(sharder), owners(plan.after)
    for key, b, a in zip(SAMPLE, before, after, strict=True):
        if b == a:
            assert plan.move_for(key) is None
            assert sharder.table_index(key) not in slots
        else:
            assert plan.move_for(key) == (b, a)
            move = slots[sharder.table_index(key)]
            assert (move.source, move.target) == (b, a)
    moved = sum(b != a for b, a in zip(before, after, strict=True)) / len(SAMPLE)
    assert moved == pytest.approx(
        plan.moved_fraction, abs=5 * math.sqrt(plan.moved_fraction / len(SAMPLE))
    )


def test_plans_from_and_to_no_nodes_move_nothing() -> None:
    assert MaglevHash[str](table_size=SMALL).plan_add("a").moves == ()
    assert MaglevHash(["a"], table_size=SMALL).plan_remove("a").moves == ()


def test_a_plan_between_tables_of_different_sizes_has_no_moves() -> None:
    from scalekit.sharding._plan import ReshardPlan

    small, large = MaglevHash(TEN, table_size=SMALL), MaglevHash(TEN, table_size=1021)
    assert ReshardPlan.between(small, large).moves == ()


@given(key=st.text(max_size=30), n=st.integers(1, 10), heavy=st.booleans())
def test_nodes_for_gives_n_distinct_nodes_owner_first(key: str, n: int, heavy: bool) -> None:
    sharder = MaglevHash(UNEQUAL if heavy else TEN, table_size=SMALL)
    chosen = sharder.nodes_for(key, n)
    assert len(chosen) == n
    assert len(set(chosen)) == n
    assert chosen[0] == sharder.node_for(key)
    assert sharder.nodes_for(key, 10)[:n] == chosen


def test_nodes_for_draws_table_entries_with_fresh_hashes() -> None:
    sharder = MaglevHash(TEN, table_size=SMALL)
    entries = sharder._state.entries
    for key in SAMPLE[:300]:
        h, draws = murmur3_64(key), list[str]()
        while len(set(draws)) < 10:
            draws.append(entries[h % SMALL])
            h = _remix(h)
        assert sharder.nodes_for(key, 10) == list(dict.fromkeys(draws))


def test_nodes_for_walks_the_table_when_draws_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_maglev, "_MAX_TRIES_PER_NODE", 0)  # only the owner's draw
    sharder = MaglevHash(TEN, table_size=SMALL)
    entries = sharder._state.entries
    for key in SAMPLE[:300]:
        index = sharder.table_index(key)
        walked = list(dict.fromkeys(entries[index:] + entries[:index]))
        assert sharder.nodes_for(key, 10) == walked


def test_adding_a_node_changes_few_replica_sets() -> None:
    sharder = MaglevHash(TEN)
    grown = sharder.copy()
    grown.add("node-10")
    changed = joined = 0
    for key in SAMPLE[:5000]:
        old, new = set(sharder.nodes_for(key, 3)), set(grown.nodes_for(key, 3))
        changed += old != new
        joined += "node-10" in new
    # the new node must join 3/11 of the sets; churn between old nodes adds a little
    assert joined / 5000 == pytest.approx(3 / 11, abs=0.02)
    assert changed / 5000 <= 1.25 * 3 / 11


def test_replicas_balance_like_owners() -> None:
    sharder = MaglevHash(TEN)
    seconds = Counter(sharder.nodes_for(key, 2)[1] for key in SAMPLE)
    assert max(seconds.values()) / (len(SAMPLE) / 10) < 1.1


def test_a_node_too_light_for_any_entry_owns_no_key_but_is_still_a_replica() -> None:
    sharder = MaglevHash({"heavy": 1_000_000, "light": 1}, table_size=SMALL)
    assert sharder.entries_of("light") == 0
    assert sharder._shares(sharder._state) == {"heavy": 1.0, "light": 0.0}
    assert set(owners(sharder, SAMPLE[:500])) == {"heavy"}
    assert sharder.nodes_for("k", 2) == ["heavy", "light"]


def test_insertion_order_does_not_matter() -> None:
    forward = MaglevHash(UNEQUAL, table_size=1021)
    backward = MaglevHash(dict(reversed(UNEQUAL.items())), table_size=1021)
    assert forward._state.entries == backward._state.entries


def test_no_nodes_and_too_many_nodes() -> None:
    sharder: MaglevHash[str] = MaglevHash(table_size=SMALL)
    with pytest.raises(NoNodeAvailable):
        sharder.node_for("k")
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 1)
    sharder.add("a")
    assert sharder.node_for("k") == "a"
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 2)


@pytest.mark.parametrize("weight", [0, -1, math.nan])
def test_bad_weights_are_refused_and_change_nothing(weight: float) -> None:
    sharder = MaglevHash(UNEQUAL, table_size=SMALL)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError, match="weight"):
        sharder.add("x", weight)
    with pytest.raises(ConfigurationError, match="weight"):
        sharder.plan_weight("node-1", weight)
    assert snapshot(sharder) == before


def test_duplicate_unknown_and_clashing_nodes_are_refused() -> None:
    sharder: MaglevHash[object] = MaglevHash(["1", "2"], table_size=SMALL)
    before = snapshot(sharder)  # type: ignore[arg-type]
    with pytest.raises(DuplicateNode):
        sharder.add("2")
    with pytest.raises(DuplicateNode, match="both named '1'"):
        sharder.add(1)
    with pytest.raises(UnknownNode):
        sharder.remove("3")
    with pytest.raises(UnknownNode):
        sharder.entries_of("3")
    with pytest.raises(ConfigurationError, match="memory address"):
        sharder.add(object())
    assert snapshot(sharder) == before  # type: ignore[arg-type]


def test_keys_are_str_bytes_or_int() -> None:
    sharder = MaglevHash(TEN, table_size=SMALL)
    assert sharder.node_for("k") == sharder.node_for(b"k")
    with pytest.raises(TypeError, match="str, bytes or int"):
        sharder.node_for(4.2)  # type: ignore[arg-type]
    assert sharder.node_for(42) == sharder.node_for("42")  # an int key is its digits


def test_copies_and_pickles_keep_the_table() -> None:
    sharder = MaglevHash(UNEQUAL, table_size=1021)
    clone = pickle.loads(pickle.dumps(sharder))
    assert clone.table_size == 1021
    assert clone._state.entries == sharder._state.entries
    twin = sharder.copy()
    twin.remove("node-0")
    assert "node-0" in sharder.nodes
    assert owners(sharder, SAMPLE[:500]) == owners(clone, SAMPLE[:500])

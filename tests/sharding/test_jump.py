"""JumpHash: the published algorithm, balance, minimal moves, append-only buckets."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import (
    ArgumentTypeError,
    ConfigurationError,
    DuplicateNode,
    NoNodeAvailable,
    UnknownNode,
)
from scalekit.hashing import murmur3_64
from scalekit.sharding import _jump
from scalekit.sharding._base import ShardingScheme
from scalekit.sharding._jump import JumpHash, jump_bucket
from scalekit.sharding._plan import ReshardPlan

RNG = random.Random(20)
KEYS = [f"user:{RNG.getrandbits(64):x}" for _ in range(200_000)]
SAMPLE = KEYS[:20_000]
TEN = [f"node-{i}" for i in range(10)]


def owners(sharder: ShardingScheme[str, Any], keys: list[str] = SAMPLE) -> list[str]:
    return [sharder.node_for(key) for key in keys]


def snapshot(sharder: JumpHash[str]) -> tuple[object, ...]:
    return (sharder.nodes, sharder._state, owners(sharder, KEYS[:500]))


@pytest.mark.parametrize(
    ("key", "buckets", "bucket"),
    [
        # Vectors of the published C++ (as in ClickHouse's jumpConsistentHash tests).
        (1, 1, 0),
        (42, 57, 43),
        (256, 1024, 520),
        (3735883980, 1, 0),
        (3735883980, 666, 361),
        (16045690984833335023, 255, 237),
    ],
)
def test_jump_bucket_is_the_published_algorithm(key: int, buckets: int, bucket: int) -> None:
    assert jump_bucket(key, buckets) == bucket


def test_jump_bucket_needs_a_bucket() -> None:
    with pytest.raises(ConfigurationError):
        jump_bucket(1, 0)


@pytest.mark.parametrize(
    ("key", "buckets", "error"),
    [
        (-1, 3, ConfigurationError),
        (2**64, 3, ConfigurationError),
        pytest.param(10**5000, 3, ConfigurationError, id="a-5000-digit-key"),
        (True, 3, ArgumentTypeError),
        ("k", 3, ArgumentTypeError),
        (1.5, 3, ArgumentTypeError),
        (1, 1.5, ArgumentTypeError),
        (1, True, ArgumentTypeError),
        pytest.param(1, 10**400, ConfigurationError, id="a-400-digit-count"),
    ],
)
def test_jump_bucket_refuses_what_is_not_a_64_bit_key_or_a_count(
    key: Any, buckets: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        jump_bucket(key, buckets)


@given(st.integers(0, 2**64 - 1), st.integers(1, 500))
def test_a_key_moves_only_to_an_appended_bucket(key: int, buckets: int) -> None:
    before, after = jump_bucket(key, buckets), jump_bucket(key, buckets + 1)
    assert 0 <= before < buckets
    assert after in (before, buckets)


def test_node_for_is_jump_bucket_of_the_key_hash() -> None:
    sharder = JumpHash(TEN)
    for key in KEYS[:2000]:
        expected = TEN[jump_bucket(murmur3_64(key), 10)]
        assert sharder.node_for(key) == expected
        assert sharder._owner(sharder._state, key.encode()) == expected


def test_balance_at_10_nodes() -> None:
    counts = Counter(owners(JumpHash(TEN), KEYS))
    assert set(counts) == set(TEN)
    assert max(counts.values()) / (len(KEYS) / 10) <= 1.03


def test_adding_a_node_moves_the_ideal_share_only_to_it() -> None:
    sharder = JumpHash(TEN)
    before = owners(sharder, KEYS)
    sharder.add("node-10")
    after = owners(sharder, KEYS)
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert {a for _, a in moved} == {"node-10"}  # never between two old nodes
    assert len(moved) / len(KEYS) <= 1.05 / 11
    # ... taken evenly from every old node: 1/110 of all keys each, in expectation
    taken = Counter(b for b, _ in moved)
    assert set(taken) == set(TEN)
    assert all(abs(count / len(KEYS) - 1 / 110) < 0.002 for count in taken.values())


def test_removing_the_last_node_moves_only_its_keys() -> None:
    sharder = JumpHash([*TEN, "node-10"])
    before = owners(sharder)
    sharder.remove("node-10")
    after = owners(sharder)
    for b, a in zip(before, after, strict=True):
        assert b == a or b == "node-10"
    assert "node-10" not in after


@given(
    size=st.integers(1, 12),
    change=st.sampled_from(["add", "remove"]),
)
@settings(max_examples=30)
def test_plans_are_exact_and_cover_every_move(size: int, change: str) -> None:
    nodes = [f"n{i}" for i in range(size)]
    sharder = JumpHash(nodes)
    if change == "remove" and size == 1:
        plan = sharder.plan_remove("n0")  # the last node: nothing left to move to
        assert plan.moves == ()
        return
    plan = sharder.plan_add("new") if change == "add" else sharder.plan_remove(nodes[-1])
    keys = SAMPLE[:2000]
    before, after = owners(sharder, keys), owners(plan.after, keys)
    pairs = {(b, a) for b, a in zip(before, after, strict=True) if b != a}
    for key, b, a in zip(keys, before, after, strict=True):
        assert plan.move_for(key) == (None if b == a else (b, a))
    assert pairs <= {(move.source, move.target) for move in plan.moves}
    count = len(nodes)
    expected = 1 / (count + 1) if change == "add" else 1 / count
    assert plan.moved_fraction == pytest.approx(expected)
    per_move = 1 / (count * (count + 1)) if change == "add" else 1 / (count * (count - 1))
    assert all(move.fraction == pytest.approx(per_move) for move in plan.moves)


def test_plan_fractions_match_the_keys_that_move() -> None:
    sharder = JumpHash(TEN)
    for plan in (sharder.plan_add("node-10"), sharder.plan_remove("node-9")):
        before, after = owners(sharder), owners(plan.after)
        observed = Counter((b, a) for b, a in zip(before, after, strict=True) if b != a)
        assert set(observed) == {(move.source, move.target) for move in plan.moves}
        for move in plan.moves:
            # an expectation: 20,000 keys land within a few standard deviations of it
            assert observed[move.source, move.target] / len(SAMPLE) == pytest.approx(
                move.fraction, abs=0.004
            )


def test_plan_between_any_two_bucket_counts() -> None:
    small, large = JumpHash(TEN[:3]), JumpHash(TEN[:7])
    grow, shrink = ReshardPlan.between(small, large), ReshardPlan.between(large, small)
    assert grow.moved_fraction == pytest.approx(1 - 3 / 7)
    assert shrink.moved_fraction == pytest.approx(1 - 3 / 7)
    assert len(grow.moves) == 3 * 4
    assert all(move.fraction == pytest.approx(1 / 21) for move in grow.moves)
    assert grow.sources == frozenset(TEN[:3])
    assert shrink.targets == frozenset(TEN[:3])


@given(key=st.text(max_size=30), n=st.integers(1, 10))
def test_nodes_for_gives_n_distinct_nodes_owner_first(key: str, n: int) -> None:
    sharder = JumpHash(TEN)
    chosen = sharder.nodes_for(key, n)
    assert len(chosen) == n
    assert len(set(chosen)) == n
    assert chosen[0] == sharder.node_for(key)
    assert sharder.nodes_for(key, 10)[:n] == chosen  # a prefix of the whole preference list


def test_replicas_balance_like_owners() -> None:
    sharder = JumpHash(TEN)
    seconds = Counter(sharder.nodes_for(key, 2)[1] for key in SAMPLE)
    assert max(seconds.values()) / (len(SAMPLE) / 10) < 1.1


def test_appending_a_node_changes_a_replica_set_only_by_joining_it() -> None:
    sharder = JumpHash(TEN[:6])
    grown = sharder.copy()
    grown.add("node-6")
    by_more_than_one = 0
    for key in SAMPLE[:3000]:
        old, new = sharder.nodes_for(key, 3), grown.nodes_for(key, 3)
        assert new[0] == old[0] or new[0] == "node-6"
        left = set(old) - set(new)
        if left:
            assert "node-6" in new
        by_more_than_one += len(left) > 1
    # usually the new node replaces exactly one; two when it took two draws
    assert by_more_than_one / 3000 < 0.05


def test_nodes_for_fills_deterministically_when_draws_run_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_jump, "_MAX_TRIES_PER_NODE", 0)  # only the owner's draw
    sharder = JumpHash(TEN)
    for key in SAMPLE[:200]:
        chosen = sharder.nodes_for(key, 10)
        owner = sharder.node_for(key)
        start = TEN.index(owner)
        assert chosen == [TEN[(start + step) % 10] for step in range(10)]


def test_no_nodes_and_too_many_nodes() -> None:
    sharder: JumpHash[str] = JumpHash()
    with pytest.raises(NoNodeAvailable):
        sharder.node_for("k")
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 1)
    sharder.add("a")
    assert sharder.node_for("k") == "a"
    with pytest.raises(NoNodeAvailable):
        sharder.nodes_for("k", 2)
    assert sharder.nodes_for("k", 0) == []


def test_removing_a_middle_node_is_refused_clearly_and_changes_nothing() -> None:
    sharder = JumpHash(TEN)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError, match=r"only remove its last node \('node-9'\)"):
        sharder.remove("node-3")
    with pytest.raises(ConfigurationError, match="renumber"):
        sharder.plan_remove("node-0")
    assert snapshot(sharder) == before
    sharder.remove("node-9")  # the last one is fine, and then the one before it
    sharder.remove("node-8")
    assert sharder.nodes == tuple(TEN[:8])


@pytest.mark.parametrize("weight", [2, 0.5, 1.5])
def test_weights_other_than_1_are_refused(weight: float) -> None:
    sharder = JumpHash(TEN)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError, match="unweighted"):
        sharder.add("x", weight)
    with pytest.raises(ConfigurationError, match="unweighted"):
        sharder.plan_add("x", weight)
    with pytest.raises(ConfigurationError, match="unweighted"):
        sharder.set_weight("node-1", weight)
    with pytest.raises(ConfigurationError, match="unweighted"):
        JumpHash({"a": 1, "b": weight})
    assert snapshot(sharder) == before
    sharder.add("x", 1.0)  # 1 in any spelling is fine
    assert sharder.weight_of("x") == 1


@pytest.mark.parametrize("weight", [0, -1])
def test_non_positive_weights_are_refused(weight: float) -> None:
    sharder = JumpHash(TEN)
    before = snapshot(sharder)
    with pytest.raises(ConfigurationError):
        sharder.add("x", weight)
    assert snapshot(sharder) == before


def test_duplicate_and_unknown_nodes_are_refused() -> None:
    sharder = JumpHash(TEN)
    before = snapshot(sharder)
    with pytest.raises(DuplicateNode):
        sharder.add("node-9")
    with pytest.raises(DuplicateNode):
        JumpHash(["a", "a"])
    with pytest.raises(UnknownNode):
        sharder.remove("nope")
    with pytest.raises(UnknownNode):
        sharder.plan_remove("nope")
    assert snapshot(sharder) == before


def test_keys_are_str_bytes_or_int() -> None:
    sharder = JumpHash(TEN)
    assert sharder.node_for("k") == sharder.node_for(b"k")
    with pytest.raises(TypeError, match="str, bytes or int"):
        sharder.node_for(4.2)  # type: ignore[arg-type]
    assert sharder.node_for(42) == sharder.node_for("42")  # an int key is its digits


def test_shares_copies_and_pickles() -> None:
    sharder = JumpHash(TEN[:4])
    assert sharder._shares(sharder._state) == dict.fromkeys(TEN[:4], 0.25)
    clone = pickle.loads(pickle.dumps(sharder))
    twin = sharder.copy()
    twin.add("node-4")
    assert clone.nodes == sharder.nodes == tuple(TEN[:4])
    assert owners(clone, SAMPLE[:500]) == owners(sharder, SAMPLE[:500])

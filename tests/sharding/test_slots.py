"""SlotMap: Redis Cluster's key slots (checked against a real server), balance,
minimal moves, exact slot plans, and tables that remember their history."""

from __future__ import annotations

import binascii
import copy
import itertools
import math
import pickle
import random
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from scalekit.errors import (
    ConfigurationError,
    DuplicateNode,
    NoNodeAvailable,
    ScalekitError,
    UnknownNode,
)
from scalekit.hashing import murmur3_64
from scalekit.sharding._slots import SlotMap, crc16_xmodem, redis_key_slot
from tests.services import redis_cluster_node, require_service

RNG = random.Random(7)
KEYS = [f"user:{RNG.getrandbits(48)}" for _ in range(20_000)]


def _table(slot_map: Any) -> tuple[Any, ...]:
    table: tuple[Any, ...] = slot_map._state.table
    return table


def _exact(slot_map: SlotMap[Any], node: Any) -> Fraction:
    total = sum(Fraction(slot_map.weight_of(n)) for n in slot_map.nodes)
    return Fraction(slot_map.weight_of(node)) * slot_map.slots / total


# -- Redis Cluster's key slots ---------------------------------------------------------


def test_crc16_check_value_and_the_c_implementation() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3  # CRC-16/XMODEM's check value
    assert crc16_xmodem(b"") == 0


@given(st.binary(max_size=64))
def test_crc16_table_matches_binascii(data: bytes) -> None:
    assert crc16_xmodem(data) == binascii.crc_hqx(data, 0)


def test_redis_cluster_spec_examples() -> None:
    assert redis_key_slot("foo") == 12182  # CLUSTER KEYSLOT foo, in the Redis docs
    assert redis_key_slot("{user1000}.following") == redis_key_slot("{user1000}.followers")
    assert redis_key_slot("{user1000}.following") == redis_key_slot("user1000")
    # The cluster spec's hash tag examples:
    assert redis_key_slot("foo{}{bar}") == crc16_xmodem(b"foo{}{bar}") % 16384  # empty tag
    assert redis_key_slot("foo{{bar}}zap") == redis_key_slot("{bar")  # tag is "{bar"
    assert redis_key_slot("foo{bar}{zap}") == redis_key_slot("bar")  # the first tag only
    assert redis_key_slot("") == 0
    assert redis_key_slot("a{b") == crc16_xmodem(b"a{b") % 16384  # no closing brace
    cluster = SlotMap.redis_cluster(["m1", "m2", "m3"])
    assert cluster.slots == 16384
    assert cluster.slot_of("foo") == 12182
    assert cluster.slot_of(b"foo") == 12182


def _cluster_client(host: str, port: int) -> Any:
    """A client of a reachable, cluster-enabled Redis at host:port, else None."""
    import redis

    client = redis.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=5)
    try:
        if client.info("cluster").get("cluster_enabled") == 1:
            return client
    except redis.RedisError:
        pass
    client.close()
    return None


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[Any]:
    """A client of a throwaway cluster-enabled Redis of this module's own (CLUSTER
    KEYSLOT answers with no slots assigned); skips, or fails when services are
    required, without redis-server."""
    with ExitStack() as stack:
        clients: list[Any] = []

        def start(_: str) -> None:
            port = stack.enter_context(redis_cluster_node())
            client = _cluster_client("127.0.0.1", port)
            if client is None:
                raise ConnectionError("the cluster-enabled redis-server does not answer")
            clients.append(client)

        require_service("a cluster-enabled redis-server", "127.0.0.1 (a free port)", start)
        try:
            yield clients[0]
        finally:
            clients[0].close()


def _random_key(rng: random.Random) -> bytes:
    alphabet = "ab{}x/:é字😀"
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 24)))  # any bytes
    if kind == 1:
        tag = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 4)))
        return f"{rng.randint(0, 99)}{{{tag}}}.{rng.randint(0, 9)}".encode()  # tags, {} too
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
    return text.encode()


def test_slots_agree_with_a_real_redis_cluster_node(cluster_node: Any) -> None:
    rng = random.Random(2024)
    keys = [_random_key(rng) for _ in range(2000)]
    keys += [b"foo", b"{user1000}.following", b"{}", b"{}{a}", b"{{}}", b"", "ключ".encode()]
    pipe = cluster_node.pipeline(transaction=False)
    for key in keys:
        pipe.execute_command("CLUSTER", "KEYSLOT", key)
    answers = pipe.execute()
    cluster = SlotMap.redis_cluster(["m1"])
    mismatched = [(k, a) for k, a in zip(keys, answers, strict=True) if cluster.slot_of(k) != a]
    assert mismatched == []


# -- balance and quotas -----------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, 10, 17])
def test_equal_weights_differ_by_at_most_one_slot(count: int) -> None:
    slot_map = SlotMap([f"n{i}" for i in range(count)])
    quotas = slot_map.quotas()
    assert sum(quotas.values()) == 16384
    assert max(quotas.values()) - min(quotas.values()) <= 1
    slot_map._check()


def test_the_first_table_gives_contiguous_ranges_in_node_order() -> None:
    slot_map = SlotMap({"a": 1, "b": 2, "c": 1}, slots=16)
    assert [sorted(slot_map.slots_of(n)) for n in slot_map.nodes] == [
        [0, 1, 2, 3],
        list(range(4, 12)),
        [12, 13, 14, 15],
    ]


def test_keys_spread_like_the_slots() -> None:
    slot_map = SlotMap({"a": 1, "b": 3})
    counts = Counter(slot_map.node_for(k) for k in KEYS)
    assert counts["b"] / len(KEYS) == pytest.approx(0.75, abs=0.015)
    assert slot_map.slot_of("k") == murmur3_64("k") % 16384


# -- minimal moves --------------------------------------------------------------------


def _moved_between_survivors(before: tuple[Any, ...], after: tuple[Any, ...], keep: Any) -> int:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b and a in keep and b in keep)


@pytest.mark.parametrize("weights", [[1] * 10, [1, 2, 3, 1, 2, 3, 1, 2, 3, 5]])
def test_adding_one_node_moves_little_more_than_the_ideal(weights: list[int]) -> None:
    slot_map = SlotMap({f"n{i}": w for i, w in enumerate(weights)})
    for new_weight in (1, 2):
        plan = slot_map.plan_add("new", new_weight)
        assert plan.moved_fraction <= 1.05 * plan.ideal_fraction
        assert plan.targets == {"new"}
        if weights == [1] * 10 and new_weight == 1:
            assert plan.moved_fraction <= 1.05 / 11
    before, survivors = _table(slot_map), set(slot_map.nodes)
    slot_map.add("new", 2)
    assert _moved_between_survivors(before, _table(slot_map), survivors) == 0
    assert all(b == "new" for a, b in zip(before, _table(slot_map), strict=True) if a != b)
    slot_map._check()


@pytest.mark.parametrize("weights", [[1] * 10, [1, 2, 3, 1, 2, 3, 1, 2, 3, 5]])
def test_removing_a_node_moves_only_its_slots(weights: list[int]) -> None:
    slot_map = SlotMap({f"n{i}": w for i, w in enumerate(weights)})
    plan = slot_map.plan_remove("n4")
    assert plan.sources == {"n4"}
    assert plan.moved_fraction == pytest.approx(plan.ideal_fraction, abs=1 / 16384)
    assert plan.moved_fraction <= 1.05 * plan.ideal_fraction
    moved = {slot for move in plan.moves for slot in move.slots}
    assert moved == slot_map.slots_of("n4")
    before = _table(slot_map)
    slot_map.remove("n4")
    after = _table(slot_map)
    assert [s for s in range(16384) if before[s] != after[s]] == sorted(moved)
    slot_map._check()


def _minimal(before: Any, after: Any) -> None:
    """Slots move only from nodes over their new quota to nodes under it, and only
    as many as the new quotas require."""
    old, new = _table(before), _table(after)
    held = Counter(old)
    quotas = after.quotas()
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    for source, target in changed:
        assert source not in quotas or held[source] > quotas[source]
        assert held[target] < quotas[target]
    assert len(changed) == sum(max(0, quota - held[node]) for node, quota in quotas.items())


def _every_share_shifts_a_slot(before: Any, after: Any) -> bool:
    """Whether every node in both changes its exact share by a slot or more."""
    return all(
        abs(_exact(after, node) - _exact(before, node)) >= 1
        for node in before.nodes
        if node in after.nodes
    )


@given(
    weights=st.lists(st.integers(1, 10), min_size=1, max_size=12),
    new_weight=st.integers(1, 10),
    victim=st.integers(0, 11),
    changed_weight=st.integers(1, 10),
)
@settings(max_examples=40)
def test_moves_are_minimal_and_only_to_or_from_the_changed_node(
    weights: list[int], new_weight: int, victim: int, changed_weight: int
) -> None:
    slot_map = SlotMap({f"n{i}": w for i, w in enumerate(weights)})
    before = slot_map.copy()
    slot_map.add("new", new_weight)
    _minimal(before, slot_map)
    # Here each share drops by a slot or more (16384 * 1 * 1 / (120 * 121) > 1), so
    # rounding alone never moves a slot between two nodes that stay.
    assert _every_share_shifts_a_slot(before, slot_map)
    assert _moved_between_survivors(_table(before), _table(slot_map), set(before.nodes)) == 0
    gone = slot_map.nodes[victim % len(slot_map)]
    before = slot_map.copy()
    slot_map.remove(gone)
    _minimal(before, slot_map)
    if _every_share_shifts_a_slot(before, slot_map):
        assert _moved_between_survivors(_table(before), _table(slot_map), set(slot_map.nodes)) == 0
    if len(slot_map):
        before = slot_map.copy()
        slot_map.set_weight(slot_map.nodes[0], changed_weight)
        _minimal(before, slot_map)
    slot_map._check()


@given(
    weights=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    changes=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 6)), min_size=1, max_size=4),
)
def test_quotas_need_the_fewest_moves_of_any_rounding(
    weights: list[int], changes: list[tuple[int, int]]
) -> None:
    """Against every way of rounding the shares down or up (slots=13, few nodes)."""
    slot_map = SlotMap({f"n{i}": w for i, w in enumerate(weights)}, slots=13)
    for index, weight in changes:
        node = slot_map.nodes[index % len(slot_map)]
        held = Counter(_table(slot_map))
        slot_map.set_weight(node, weight)
        exact = {n: _exact(slot_map, n) for n in slot_map.nodes}
        floors = {n: math.floor(e) for n, e in exact.items()}
        fractional = [n for n in exact if exact[n] != floors[n]]
        spare = 13 - sum(floors.values())
        fewest = min(
            sum(max(0, floors[n] + (n in up) - held[n]) for n in exact)
            for up in itertools.combinations(fractional, spare)
        )
        moved = sum(max(0, count - held[n]) for n, count in slot_map.quotas().items())
        assert moved == fewest
        slot_map._check()


# -- plans -------------------------------------------------------------------------------


def _history() -> SlotMap[str]:
    slot_map = SlotMap({f"n{i}": 1 + i % 3 for i in range(8)})
    slot_map.add("n8", 2)
    slot_map.remove("n2")
    slot_map.set_weight("n5", 4)
    return slot_map


def test_plans_say_exactly_which_keys_move() -> None:
    slot_map = _history()
    for plan in (
        slot_map.plan_add("new", 3),
        slot_map.plan_remove("n4"),
        slot_map.plan_weight("n0", 5),
    ):
        by_slot = {slot: move for move in plan.moves for slot in move.slots}
        assert sum(len(move.slots) for move in plan.moves) == len(by_slot)
        for move in plan.moves:
            assert move.fraction == len(move.slots) / 16384
            assert list(move.slots) == sorted(move.slots)
        for key in KEYS:
            expected = plan.move_for(key)
            before, after = slot_map.node_for(key), plan.after.node_for(key)
            assert (expected is None) == (before == after)
            move = by_slot.get(slot_map.slot_of(key))
            if expected is None:
                assert move is None
            else:
                assert move is not None
                assert (move.source, move.target) == expected


def test_a_plan_and_the_change_build_the_same_table() -> None:
    slot_map = _history()
    for plan, change in (
        (slot_map.plan_add("new", 3), lambda s: s.add("new", 3)),
        (slot_map.plan_remove("n4"), lambda s: s.remove("n4")),
        (slot_map.plan_weight("n0", 5), lambda s: s.set_weight("n0", 5)),
    ):
        twin = slot_map.copy()
        change(twin)
        assert _table(plan.after) == _table(twin)
    assert _table(slot_map) == _table(_history())  # planning changed nothing


def test_the_table_depends_on_history_and_survives_pickles_and_copies() -> None:
    slot_map = _history()
    fresh = SlotMap({n: slot_map.weight_of(n) for n in slot_map.nodes})
    assert _table(fresh) != _table(slot_map)  # same nodes, another history
    assert fresh.quotas() == slot_map.quotas()
    for clone in (pickle.loads(pickle.dumps(slot_map)), copy.copy(slot_map), slot_map.copy()):
        assert _table(clone) == _table(slot_map)
        clone.add("later")
        twin = slot_map.copy()
        twin.add("later")
        assert _table(clone) == _table(twin)  # a clone goes on from the same history


# -- replicas, bad input ---------------------------------------------------------------


def test_nodes_for_walks_the_following_slots() -> None:
    slot_map = SlotMap({"a": 1, "b": 1, "c": 1, "light": 1e-9}, slots=12)
    assert slot_map.quotas()["light"] == 0
    key = next(k for k in KEYS if slot_map.slot_of(k) == 0)
    assert slot_map.nodes_for(key, 4) == ["a", "b", "c", "light"]
    key = next(k for k in KEYS if slot_map.slot_of(k) == 11)
    assert slot_map.nodes_for(key, 3) == ["c", "a", "b"]


def _snapshot(slot_map: SlotMap[Any]) -> tuple[Any, ...]:
    return slot_map.nodes, [slot_map.weight_of(n) for n in slot_map.nodes], _table(slot_map)


def test_bad_input_is_refused_and_changes_nothing() -> None:
    slot_map = _history()
    before = _snapshot(slot_map)
    with pytest.raises(DuplicateNode):
        slot_map.add("n0")
    for weight in (0, -1, math.nan, math.inf):
        with pytest.raises(ConfigurationError):
            slot_map.add("x", weight)
        with pytest.raises(ConfigurationError):
            slot_map.plan_add("x", weight)
        with pytest.raises(ConfigurationError):
            slot_map.set_weight("n0", weight)
    with pytest.raises(UnknownNode):
        slot_map.remove("zzz")
    with pytest.raises(UnknownNode):
        slot_map.plan_remove("zzz")
    with pytest.raises(UnknownNode):
        slot_map.slots_of("zzz")
    with pytest.raises(TypeError):
        slot_map.node_for(None)  # type: ignore[arg-type]
    assert _snapshot(slot_map) == before
    slot_map._check()


@pytest.mark.parametrize("slots", [0, -1, 2.5, True, "16384", None, 10**400, 2**25])
def test_bad_slot_counts(slots: Any) -> None:
    with pytest.raises(ScalekitError, match="slots must be"):
        SlotMap(["a"], slots=slots)
    with pytest.raises(TypeError, match="hash must be callable"):
        SlotMap(["a"], hash="crc16")  # type: ignore[arg-type]


def test_an_empty_map_has_no_node() -> None:
    slot_map: SlotMap[str] = SlotMap.redis_cluster()
    with pytest.raises(NoNodeAvailable):
        slot_map.node_for("k")
    slot_map.add("a")
    assert slot_map.slots_of("a") == frozenset(range(16384))
    slot_map.remove("a")
    with pytest.raises(NoNodeAvailable):
        slot_map.node_for("k")
    assert slot_map.slot_of("foo") == 12182  # slots need no node


# -- following a cluster: tables taken as they are ----------------------------------------


def test_assign_slot_moves_one_slot_and_a_change_rebalances() -> None:
    slot_map = SlotMap.redis_cluster(["a", "b", "c"])
    before = _table(slot_map)
    slot_map.assign_slot(0, "c")
    after = _table(slot_map)
    assert [s for s in range(16384) if before[s] != after[s]] == [0]
    assert slot_map.node_for("{user1000}") == ("c" if slot_map.slot_of("{user1000}") == 0 else "a")
    assert slot_map.nodes_for(next(k for k in KEYS if slot_map.slot_of(k) == 0), 3)[0] == "c"
    slot_map._check()  # uneven now: the quotas hold again after the next change
    for clone in (
        pickle.loads(pickle.dumps(slot_map)),
        SlotMap.from_dict(slot_map.to_dict()),
        slot_map.copy(),
    ):
        assert _table(clone) == _table(slot_map)
        clone._check()
    plan = slot_map.plan_add("d")
    assert {m.source for m in plan.moves} <= {"a", "b", "c"}
    slot_map.add("d")
    slot_map._check()
    assert _table(slot_map) == _table(plan.after)
    assert set(slot_map.quotas().values()) == {4096}


def test_assign_slot_refuses_bad_input_and_changes_nothing() -> None:
    slot_map = SlotMap.redis_cluster(["a", "b"])
    before = _snapshot(slot_map)
    with pytest.raises(UnknownNode):
        slot_map.assign_slot(1, "z")
    for slot in (-1, 16384, 1.5, True, "1", None):
        with pytest.raises(ScalekitError):
            slot_map.assign_slot(slot, "a")  # type: ignore[arg-type]
    with pytest.raises(ScalekitError):
        slot_map.assign_slot(0, None)  # type: ignore[arg-type]
    assert _snapshot(slot_map) == before
    with pytest.raises(ConfigurationError, match="Redis Cluster"):
        SlotMap(["a"]).reload(object())


class SlotMapMachine(RuleBasedStateMachine):
    """Random changes against a plain model of the weights; every change is first
    planned, and the plan must be what happens."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[str, int] = {}
        self.slot_map: SlotMap[str] = SlotMap(slots=97)
        self.fresh = 0

    @initialize(count=st.integers(0, 4))
    def start(self, count: int) -> None:
        for _ in range(count):
            self.add(1)

    def _apply(self, plan: Any, change: Any) -> None:
        before = self.slot_map.copy()
        change()
        assert _table(plan.after) == _table(self.slot_map)
        if len(before) and len(self.slot_map):
            _minimal(before, self.slot_map)

    @rule(weight=st.integers(1, 5))
    def add(self, weight: int) -> None:
        node = f"n{self.fresh}"
        self.fresh += 1
        plan = self.slot_map.plan_add(node, weight)
        self._apply(plan, lambda: self.slot_map.add(node, weight))
        self.weights[node] = weight

    @rule(index=st.integers(0, 20))
    def remove(self, index: int) -> None:
        assume(self.weights)
        node = list(self.weights)[index % len(self.weights)]
        plan = self.slot_map.plan_remove(node)
        self._apply(plan, lambda: self.slot_map.remove(node))
        del self.weights[node]

    @rule(index=st.integers(0, 20), weight=st.integers(1, 5))
    def set_weight(self, index: int, weight: int) -> None:
        assume(self.weights)
        node = list(self.weights)[index % len(self.weights)]
        plan = self.slot_map.plan_weight(node, weight)
        self._apply(plan, lambda: self.slot_map.set_weight(node, weight))
        self.weights[node] = weight

    @rule(slot=st.integers(0, 96), index=st.integers(0, 20))
    def assign_slot(self, slot: int, index: int) -> None:
        assume(self.weights)
        node = list(self.weights)[index % len(self.weights)]
        before = _table(self.slot_map)
        self.slot_map.assign_slot(slot, node)
        after = _table(self.slot_map)
        assert after[slot] == node
        assert [s for s in range(97) if before[s] != after[s]] in ([], [slot])

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.slot_map.nodes == tuple(self.weights)
        self.slot_map._check()


TestSlotMapMachine = SlotMapMachine.TestCase
TestSlotMapMachine.settings = settings(max_examples=30, stateful_step_count=12)

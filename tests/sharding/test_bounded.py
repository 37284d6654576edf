"""BoundedLoads: consistent hashing with bounded loads, against a plain model."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from scalekit.errors import ConfigurationError, NoNodeAvailable, ScalekitError, UnknownNode
from scalekit.sharding import HashRing
from scalekit.sharding._bounded import BoundedLoads

NODES = [f"n{i}" for i in range(5)]
KEYS = [f"k{i}" for i in range(6)]


def ring(nodes: Any = ()) -> HashRing[str]:
    return HashRing(nodes, vnodes=16)


class PlainSharder:
    """A Sharder that is not a ShardingScheme: BoundedLoads reads it afresh each time."""

    def __init__(self, inner: HashRing[str]) -> None:
        self.inner = inner

    def node_for(self, key: Any) -> str:
        return self.inner.node_for(key)

    def nodes_for(self, key: Any, n: int) -> list[str]:
        return self.inner.nodes_for(key, n)

    def add(self, node: str, weight: float = 1) -> None:
        self.inner.add(node, weight)

    def remove(self, node: str) -> None:
        self.inner.remove(node)

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.inner.nodes

    def weight_of(self, node: str) -> float:
        return self.inner.weight_of(node)

    def plan_add(self, node: str, weight: float = 1) -> Any:
        return self.inner.plan_add(node, weight)

    def plan_remove(self, node: str) -> Any:
        return self.inner.plan_remove(node)

    def copy(self) -> PlainSharder:
        return PlainSharder(self.inner.copy())


def snapshot(balancer: BoundedLoads[str]) -> tuple[Any, ...]:
    return (balancer.loads(), balancer.total, {k: balancer.assigned(k) for k in KEYS})


# -- the stateful test ----------------------------------------------------------


class BoundedLoadsMachine(RuleBasedStateMachine):
    """Every step checked against a model that keeps each key's holds per node."""

    @initialize(
        c=st.sampled_from([1.25, 1.05, 2.0, 1.5]),
        count=st.integers(0, 4),
        plain=st.booleans(),
        sticky=st.booleans(),
    )
    def start(self, c: float, count: int, plain: bool, sticky: bool) -> None:
        self.ring = ring(NODES[:count])
        self.sharder: Any = PlainSharder(self.ring) if plain else self.ring
        self.balancer = BoundedLoads(self.sharder, c=c, sticky=sticky)
        self.c = c
        self.sticky = sticky
        self.cap_at_last: dict[str, int] = {}  # each node's capacity at its last acquisition
        self.holds: dict[str, dict[str, int]] = {}  # key -> {node: holds}, current last
        self.loads: Counter[str] = Counter()

    # -- the model ------------------------------------------------------------

    def live_load(self) -> int:
        return sum(load for node, load in self.loads.items() if node in self.ring)

    def limit(self, node: str) -> float:
        total_weight = math.fsum(self.ring.weight_of(n) for n in self.ring.nodes)
        return self.c * (self.live_load() + 1) * self.ring.weight_of(node) / total_weight

    def expected_node(self, key: str) -> tuple[str, bool]:
        """The node ``key`` should go to, and whether that is a new assignment."""
        held = self.holds.get(key)
        if self.sticky and held and next(reversed(held)) in self.ring:
            return next(reversed(held)), False
        preference = self.ring.nodes_for(key, len(self.ring))
        for node in preference:
            if self.loads[node] < self.limit(node):
                return node, True
        raise AssertionError("no node has room: the capacities cannot add up")

    # -- rules ------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS))
    def acquire(self, key: str) -> None:
        if len(self.ring) == 0:
            before = snapshot(self.balancer)
            with pytest.raises(NoNodeAvailable):
                self.balancer.acquire(key)
            assert snapshot(self.balancer) == before
            return
        expected, new = self.expected_node(key)
        owner = self.ring.node_for(key)
        owner_has_room = self.loads[owner] < self.limit(owner)
        bound = math.ceil(self.limit(expected))
        live_after = self.live_load() + 1

        node = self.balancer.acquire(key)

        assert node == expected
        if new and node != owner:
            event("spilled past the owner")
        if key in self.holds and new:
            event("a held key reassigned after its node went away")
        held = self.holds.setdefault(key, {})
        held[node] = held.pop(node, 0) + 1
        self.loads[node] += 1
        if new:
            self.cap_at_last[node] = bound
            if owner_has_room:
                assert node == owner
            assert self.balancer.load_of(node) <= bound
            weights = {self.ring.weight_of(n) for n in self.ring.nodes}
            if len(weights) == 1:  # the bound as the paper states it
                assert self.balancer.load_of(node) <= math.ceil(
                    self.c * live_after / len(self.ring)
                )

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.holds)))
        held = self.holds[key]
        give_node = data.draw(st.booleans())
        expected = data.draw(st.sampled_from(sorted(held))) if give_node else next(iter(held))
        if len(held) > 1:
            event("released a key held on two nodes")
        node = self.balancer.release(key, expected if give_node else None)
        assert node == expected
        held[node] -= 1
        if not held[node]:
            del held[node]
            if not held:
                del self.holds[key]
        self.loads[node] -= 1
        if not self.loads[node]:
            del self.loads[node]

    @rule(key=st.sampled_from(KEYS), node=st.sampled_from([None, *NODES]))
    def release_what_is_not_held(self, key: str, node: str | None) -> None:
        held = self.holds.get(key, {})
        if held and (node is None or node in held):
            return
        before = snapshot(self.balancer)
        with pytest.raises(ConfigurationError, match="is not held"):
            self.balancer.release(key, node)
        assert snapshot(self.balancer) == before

    @precondition(lambda self: len(self.ring) < len(NODES))
    @rule(data=st.data(), weight=st.sampled_from([1, 1, 1, 2, 3]))
    def add_node(self, data: st.DataObject, weight: int) -> None:
        node = data.draw(st.sampled_from([n for n in NODES if n not in self.ring]))
        self.sharder.add(node, weight)

    @precondition(lambda self: len(self.ring) > 0)
    @rule(data=st.data())
    def remove_node(self, data: st.DataObject) -> None:
        self.sharder.remove(data.draw(st.sampled_from(self.ring.nodes)))

    @precondition(lambda self: len(self.ring) > 0)
    @rule(data=st.data(), weight=st.sampled_from([1, 2, 0.5]))
    def set_weight(self, data: st.DataObject, weight: float) -> None:
        self.ring.set_weight(data.draw(st.sampled_from(self.ring.nodes)), weight)

    @rule(node=st.sampled_from(NODES))
    def capacity(self, node: str) -> None:
        if node in self.ring:
            assert self.balancer.capacity(node) == math.ceil(self.limit(node))
        else:
            with pytest.raises(UnknownNode):
                self.balancer.capacity(node)

    # -- invariants ---------------------------------------------------------------

    @invariant()
    def loads_are_acquisitions_minus_releases(self) -> None:
        expected = {node: self.loads[node] for node in self.ring.nodes}
        expected.update((node, load) for node, load in self.loads.items() if load)
        assert self.balancer.loads() == expected
        assert all(load >= 0 for load in expected.values())
        assert self.balancer.total == sum(self.loads.values())
        for node in NODES:
            if node in expected:
                assert self.balancer.load_of(node) == expected[node]
            else:
                with pytest.raises(UnknownNode):
                    self.balancer.load_of(node)

    @invariant()
    def internal_invariants_hold(self) -> None:
        self.balancer._check()

    @invariant()
    def no_node_is_over_its_bound(self) -> None:
        """Without ``sticky``, a node's load never exceeds the capacity it had at its
        last acquisition (releases only lower it)."""
        if self.sticky:
            return
        for node, load in self.loads.items():
            if load:
                assert load <= self.cap_at_last[node]

    @invariant()
    def keys_are_where_the_model_says(self) -> None:
        for key in KEYS:
            held = self.holds.get(key)
            assert self.balancer.assigned(key) == (next(reversed(held)) if held else None)


TestBoundedLoadsMachine = BoundedLoadsMachine.TestCase
TestBoundedLoadsMachine.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)


# -- examples -------------------------------------------------------------------


@pytest.mark.parametrize(
    "c", [1, 0.5, 0, -2, math.nan, math.inf, -math.inf, 10**400, 1e308, "2", None, True]
)
def test_c_must_be_a_number_above_one(c: Any) -> None:
    with pytest.raises(ScalekitError, match=r"^c (must be|is too large)"):
        BoundedLoads(ring(["a"]), c=c)


@pytest.mark.parametrize("sticky", [None, 1, "yes"])
def test_sticky_must_be_a_bool(sticky: Any) -> None:
    with pytest.raises(TypeError, match="sticky must be a bool"):
        BoundedLoads(ring(["a"]), sticky=sticky)


def test_the_sharder_must_be_a_sharder() -> None:
    with pytest.raises(TypeError, match="Sharder"):
        BoundedLoads(["a", "b"])  # type: ignore[arg-type]


def test_bad_keys_and_an_empty_sharder_change_nothing() -> None:
    balancer = BoundedLoads(ring())
    with pytest.raises(NoNodeAvailable):
        balancer.acquire("k")
    assert balancer.total == 0
    assert balancer.loads() == {}
    balancer.sharder.add("a")
    for bad in (2.5, None, True, ("k",), [1]):
        with pytest.raises(TypeError, match="str, bytes or int"):
            balancer.acquire(bad)
        with pytest.raises(TypeError, match="str, bytes or int"):
            balancer.release(bad)
    assert balancer.loads() == {"a": 0}
    assert balancer.total == 0
    assert balancer.acquire(42) == "a"  # an int key is its digits
    assert balancer.release("42") == "a"
    assert balancer.acquire("k") == "a"
    assert balancer.acquire(b"k") == "a"  # the same key, as the sharder sees it
    assert balancer.release(b"k") == "a"
    assert balancer.assigned("k") == "a"


def test_many_keys_held_at_once_stay_under_the_bound() -> None:
    nodes = [f"node-{i}" for i in range(10)]
    keys = [f"user:{i}" for i in range(2000)]
    for c in (1.1, 1.25, 2.0):
        balancer = BoundedLoads(HashRing(nodes), c=c)
        for key in keys:
            balancer.acquire(key)
        assert max(balancer.loads().values()) <= math.ceil(c * len(keys) / len(nodes))
        on_owner = sum(balancer.assigned(k) == balancer.sharder.node_for(k) for k in keys)
        assert on_owner >= 0.6 * len(keys)  # most keys still go to their owner


def test_a_key_whose_owner_is_full_goes_down_its_preference_list() -> None:
    sharder = ring(["a", "b", "c", "d"])
    balancer = BoundedLoads(sharder, c=1.5)
    keys = [f"key:{i}" for i in range(200)]
    held = []
    for key in keys:
        owner = sharder.node_for(key)
        room = balancer.load_of(owner) < balancer.capacity(owner)
        node = balancer.acquire(key)
        held.append(key)
        preference = sharder.nodes_for(key, 4)
        if room:
            assert node == owner
        else:
            first_with_room = preference.index(node)
            assert first_with_room > 0
    assert balancer.total == 200


def test_weights_scale_capacity() -> None:
    sharder = ring({"small": 1, "big": 3})
    balancer = BoundedLoads(sharder, c=2.0)
    assert balancer.capacity("small") == math.ceil(2.0 * 1 / 4)
    assert balancer.capacity("big") == math.ceil(2.0 * 3 / 4)
    for i in range(400):
        balancer.acquire(f"k{i}")
    loads = balancer.loads()
    assert loads["small"] <= math.ceil(2.0 * 400 * 1 / 4)
    assert loads["big"] <= math.ceil(2.0 * 400 * 3 / 4)
    sharder.set_weight("small", 3)  # seen at once
    assert balancer.capacity("small") == balancer.capacity("big")


def test_a_celebrity_key_cannot_overload_its_owner() -> None:
    """Issue 13 item 10: one key acquired 4,000 times of 20,000 on 10 nodes put all
    4,000 on its owner (bound 2,501). Every acquisition now obeys the bound."""
    nodes = [f"node-{i}" for i in range(10)]
    balancer = BoundedLoads(HashRing(nodes), c=1.25)
    rng = random.Random(7)
    order = ["celebrity"] * 4000 + [f"user:{i}" for i in range(16000)]
    rng.shuffle(order)
    peak = 0
    for count, key in enumerate(order, 1):
        node = balancer.acquire(key)
        peak = max(peak, balancer.load_of(node))
        assert balancer.load_of(node) <= math.ceil(1.25 * count / 10)
    assert balancer.total == 20000
    assert max(balancer.loads().values()) <= math.ceil(1.25 * 20000 / 10) == 2500
    balancer._check()


@given(
    c=st.sampled_from([1.05, 1.25, 2.0]),
    nodes=st.integers(1, 6),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=120),
)
@settings(max_examples=150, deadline=None)
def test_max_load_stays_within_the_bound_after_any_acquires_and_releases(
    c: float, nodes: int, steps: list[tuple[bool, int]]
) -> None:
    """Skewed keys (key 0 most of all), acquired and released in any order: with
    acquisitions alone every node stays within ceil(c * average); with releases,
    within ceil(c * the largest total load so far / n), as nothing held moves."""
    balancer = BoundedLoads(ring([f"n{i}" for i in range(nodes)]), c=c)
    held: list[tuple[str, str]] = []
    peak = 0
    released = False
    for acquire, k in steps:
        key = f"k{k % 3 if k > 2 else 0}"
        if acquire or not held:
            held.append((key, balancer.acquire(key)))
        else:
            key, node = held.pop(k % len(held))
            assert balancer.release(key, node) == node
            released = True
        peak = max(peak, balancer.total)
        loads = balancer.loads()
        if loads:
            assert max(loads.values()) <= math.ceil(c * peak / nodes)
            if not released:
                assert max(loads.values()) <= math.ceil(c * balancer.total / nodes)
        balancer._check()


def test_a_held_key_stays_on_its_node_past_the_bound_when_sticky() -> None:
    balancer = BoundedLoads(ring(["a", "b", "c"]), c=1.25, sticky=True)
    assert balancer.sticky
    node = balancer.acquire("hot")
    for _ in range(99):
        assert balancer.acquire("hot") == node
    assert balancer.load_of(node) == 100 > balancer.capacity(node)
    assert balancer.acquire("other") != node  # new keys avoid the full node
    for _ in range(100):
        assert balancer.release("hot") == node
    assert balancer.assigned("hot") is None
    with pytest.raises(ConfigurationError, match="'hot' is not held"):
        balancer.release("hot")


def test_removing_a_node_keeps_its_holders_until_released() -> None:
    sharder = ring(["a", "b", "c"])
    balancer = BoundedLoads(sharder, sticky=True)
    keys = [f"k{i}" for i in range(30)]
    for key in keys:
        balancer.acquire(key)
    gone = balancer.assigned("k0")
    assert gone is not None
    on_gone = [k for k in keys if balancer.assigned(k) == gone]
    sharder.remove(gone)
    assert balancer.loads()[gone] == len(on_gone)  # still reported
    with pytest.raises(UnknownNode):
        balancer.capacity(gone)
    # A new key never goes to the removed node; the capacities ignore its load.
    assert balancer.acquire("fresh") in sharder.nodes
    # A held key on the removed node is assigned afresh: then on two nodes.
    moved = balancer.acquire("k0")
    assert moved in sharder.nodes
    assert balancer.assigned("k0") == moved
    assert balancer.acquire("k0") == moved
    # release() without a node drains the removed node first.
    assert balancer.release("k0") == gone
    assert balancer.release("k0") == moved
    assert balancer.release("k0", moved) == moved
    assert balancer.assigned("k0") is None
    for key in on_gone[1:]:
        assert balancer.release(key) == gone
    assert gone not in balancer.loads()
    with pytest.raises(UnknownNode):
        balancer.load_of(gone)
    # Added back, it is an ordinary idle node again.
    sharder.add(gone)
    assert balancer.load_of(gone) == 0


def test_releasing_on_the_wrong_node_changes_nothing() -> None:
    balancer = BoundedLoads(ring(["a", "b"]))
    assert not balancer.sticky
    node = balancer.acquire("k")
    other = "b" if node == "a" else "a"
    with pytest.raises(ConfigurationError, match="not held on"):
        balancer.release("k", other)
    assert balancer.loads() == {node: 1, other: 0}
    for bad in ([], float("nan")):
        with pytest.raises(ScalekitError, match="node must"):
            balancer.release("k", bad)
        with pytest.raises(ScalekitError, match="node must"):
            balancer.load_of(bad)
        with pytest.raises(ScalekitError, match="node must"):
            balancer.capacity(bad)
    assert balancer.loads() == {node: 1, other: 0}
    balancer._check()
    assert balancer.release("k", node) == node


def test_concurrent_acquires_and_releases_balance_out() -> None:
    sharder = HashRing([f"n{i}" for i in range(5)], vnodes=32)
    balancer = BoundedLoads(sharder, c=1.25)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[str] = []
        try:
            for _ in range(1500):
                if mine and rng.random() < 0.45:
                    balancer.release(mine.pop(rng.randrange(len(mine))))
                else:
                    key = f"k{rng.randrange(200)}"
                    balancer.acquire(key)
                    mine.append(key)
            while mine:
                balancer.release(mine.pop())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def churn() -> None:
        for _ in range(20):
            sharder.add("extra")
            sharder.remove("extra")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert balancer.total == 0
    assert set(balancer.loads().values()) == {0}


def test_repr_and_properties() -> None:
    sharder = ring(["a"])
    balancer = BoundedLoads(sharder, c=2)
    assert balancer.c == 2.0
    assert balancer.sharder is sharder
    balancer.acquire("k")
    assert "c=2.0" in repr(balancer)
    assert "total=1" in repr(balancer)

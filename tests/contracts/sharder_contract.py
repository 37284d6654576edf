"""The contract every scalekit ``Sharder`` meets, whatever its scheme.

Run it over a scheme by subclassing :class:`SharderContract` with a ``make``
parameter (a :class:`SharderFactory`); see tests/sharding/test_contract.py.
"""

from __future__ import annotations

import copy
import math
import pickle
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import ConfigurationError, DuplicateNode, NoNodeAvailable, UnknownNode
from scalekit.sharding import Sharder

__all__ = ["SharderContract", "SharderFactory", "churn_while_looking_up"]

KEYS = [f"key:{i}:{random.Random(i).getrandbits(32)}" for i in range(4000)]


@dataclass(frozen=True)
class SharderFactory:
    """How to build one scheme, and which promises of the contract apply to it.

    ``monotone``: a change moves keys only to an added node or from a removed one.
    ``weighted``: accepts weights other than 1. ``removes_any``: any node can be
    removed (jump hash removes only the last).
    """

    build: Callable[..., Any]
    monotone: bool = True
    weighted: bool = True
    removes_any: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self, nodes: Any = ()) -> Any:
        return self.build(nodes, **self.kwargs)


def placement(sharder: Any, keys: list[str] = KEYS) -> dict[str, Any]:
    return {key: sharder.node_for(key) for key in keys}


def state_of(sharder: Any) -> tuple[Any, ...]:
    return (
        sharder.nodes,
        tuple(sharder.weight_of(n) for n in sharder.nodes),
        placement(sharder, KEYS[:300]),
    )


class SharderContract:
    """Every test takes ``make``, a :class:`SharderFactory`."""

    def test_is_a_sharder(self, make: SharderFactory) -> None:
        assert isinstance(make(["a"]), Sharder)

    def test_an_empty_sharder_has_no_node_for_a_key(self, make: SharderFactory) -> None:
        sharder = make()
        with pytest.raises(NoNodeAvailable):
            sharder.node_for("k")
        with pytest.raises(NoNodeAvailable):
            sharder.nodes_for("k", 1)
        assert sharder.nodes_for("k", 0) == []

    def test_every_key_goes_to_a_node_and_always_the_same(self, make: SharderFactory) -> None:
        sharder = make([f"n{i}" for i in range(5)])
        first = placement(sharder)
        assert set(first.values()) == set(sharder.nodes)
        assert placement(sharder) == first
        assert placement(make([f"n{i}" for i in range(5)])) == first  # no hidden randomness

    def test_str_and_bytes_keys_agree(self, make: SharderFactory) -> None:
        sharder = make(["a", "b", "c"])
        for key in KEYS[:200]:
            assert sharder.node_for(key) == sharder.node_for(key.encode())

    @pytest.mark.parametrize("bad", [1, None, 2.5, ("k",)])
    def test_a_key_that_is_not_str_or_bytes_is_refused(
        self, make: SharderFactory, bad: Any
    ) -> None:
        with pytest.raises(TypeError):
            make(["a"]).node_for(bad)

    @given(n=st.integers(1, 6), key=st.text(max_size=20))
    @settings(max_examples=40)
    def test_nodes_for_gives_distinct_nodes_owner_first(
        self, make: SharderFactory, n: int, key: str
    ) -> None:
        sharder = make([f"n{i}" for i in range(6)])
        chosen = sharder.nodes_for(key, n)
        assert len(chosen) == n
        assert len(set(chosen)) == n
        assert chosen[0] == sharder.node_for(key)
        assert set(chosen) <= set(sharder.nodes)
        assert sharder.nodes_for(key, n + 0) == chosen

    def test_nodes_for_more_than_there_are_is_refused(self, make: SharderFactory) -> None:
        sharder = make(["a", "b"])
        with pytest.raises(NoNodeAvailable):
            sharder.nodes_for("k", 3)
        with pytest.raises(ConfigurationError):
            sharder.nodes_for("k", -1)

    def test_nodes_and_weights(self, make: SharderFactory) -> None:
        sharder = make(["a", "b"])
        sharder.add("c")
        assert sharder.nodes == ("a", "b", "c")
        assert sharder.weight_of("c") == 1
        with pytest.raises(UnknownNode):
            sharder.weight_of("zzz")

    def test_duplicate_node_is_refused_and_changes_nothing(self, make: SharderFactory) -> None:
        sharder = make(["a", "b", "c"])
        before = state_of(sharder)
        with pytest.raises(DuplicateNode):
            sharder.add("b")
        with pytest.raises(ValueError):  # DuplicateNode is a ConfigurationError, a ValueError
            sharder.plan_add("a")
        assert state_of(sharder) == before

    @pytest.mark.parametrize("weight", [0, -1, math.nan, math.inf])
    def test_a_weight_that_is_not_positive_is_refused(
        self, make: SharderFactory, weight: float
    ) -> None:
        sharder = make(["a", "b"])
        before = state_of(sharder)
        with pytest.raises(ConfigurationError):
            sharder.add("c", weight)
        assert state_of(sharder) == before

    def test_removing_an_unknown_node_is_refused_and_changes_nothing(
        self, make: SharderFactory
    ) -> None:
        sharder = make(["a", "b", "c"])
        before = state_of(sharder)
        with pytest.raises(UnknownNode):
            sharder.remove("zzz")
        with pytest.raises(KeyError):  # UnknownNode is also a KeyError
            sharder.plan_remove("zzz")
        assert state_of(sharder) == before

    def test_adding_a_node_moves_keys_only_to_it(self, make: SharderFactory) -> None:
        sharder = make([f"n{i}" for i in range(10)])
        before = placement(sharder)
        sharder.add("new")
        after = placement(sharder)
        moved = [key for key in KEYS if before[key] != after[key]]
        if make.monotone:
            assert all(after[key] == "new" for key in moved)
        assert 0 < len(moved) / len(KEYS) < 0.2  # about 1/11

    def test_removing_a_node_moves_only_its_keys(self, make: SharderFactory) -> None:
        nodes = [f"n{i}" for i in range(10)]
        sharder = make(nodes)
        victim = nodes[3] if make.removes_any else nodes[-1]
        before = placement(sharder)
        sharder.remove(victim)
        after = placement(sharder)
        assert victim not in after.values()
        moved = [key for key in KEYS if before[key] != after[key]]
        if make.monotone:
            assert all(before[key] == victim for key in moved)
        assert all(before[key] != victim or after[key] != victim for key in KEYS)

    def test_plans_are_exact_and_change_nothing(self, make: SharderFactory) -> None:
        nodes = [f"n{i}" for i in range(8)]
        sharder = make(nodes)
        before = placement(sharder)
        victim = nodes[2] if make.removes_any else nodes[-1]
        for plan, change in (
            (sharder.plan_add("new"), lambda s: s.add("new")),
            (sharder.plan_remove(victim), lambda s: s.remove(victim)),
        ):
            assert placement(sharder) == before  # planning changed nothing
            changed = sharder.copy()
            change(changed)
            after = placement(changed)
            for key in KEYS:
                expected = None if before[key] == after[key] else (before[key], after[key])
                assert plan.move_for(key) == expected
            pairs = {(before[k], after[k]) for k in KEYS if before[k] != after[k]}
            assert pairs <= {(m.source, m.target) for m in plan.moves}
            moved = sum(before[k] != after[k] for k in KEYS) / len(KEYS)
            assert plan.moved_fraction == pytest.approx(moved, abs=0.03)
            assert placement(plan.after) == after

    def test_weights_shift_keys(self, make: SharderFactory) -> None:
        if not make.weighted:
            with pytest.raises(ConfigurationError):
                make(["a"]).add("b", 2)
            return
        sharder = make({"small": 1, "big": 3})
        counts = list(placement(sharder).values())
        big = counts.count("big") / len(counts)
        assert 0.65 < big < 0.85  # expected 0.75

    def test_copies_are_independent_and_pickles_agree(self, make: SharderFactory) -> None:
        sharder = make(["a", "b", "c"])
        twin = sharder.copy()
        assert placement(twin) == placement(sharder)
        twin.add("d")
        assert "d" not in sharder.nodes
        for clone in (pickle.loads(pickle.dumps(sharder)), copy.copy(sharder)):
            assert clone.nodes == sharder.nodes
            assert placement(clone) == placement(sharder)

    def test_lookups_while_nodes_change_see_a_whole_state(self, make: SharderFactory) -> None:
        churn_while_looking_up(make, seconds=0.5)


def churn_while_looking_up(make: SharderFactory, seconds: float) -> None:
    """4 threads look up while another adds and removes nodes: no error, and
    every answer is a node that was present at some point."""
    stable = [f"n{i}" for i in range(6)]
    sharder = make(stable)
    ever = set(stable) | {f"extra{i}" for i in range(3)}
    stop = threading.Event()
    errors: list[BaseException] = []
    answers = [0]

    def look() -> None:
        try:
            while not stop.is_set():
                for key in KEYS[:200]:
                    assert sharder.node_for(key) in ever
                    chosen = sharder.nodes_for(key, 3)
                    assert len(set(chosen)) == 3
                answers[0] += 200
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def churn() -> None:
        try:
            while not stop.is_set():
                for i in range(3):
                    sharder.add(f"extra{i}")
                for i in reversed(range(3)):
                    sharder.remove(f"extra{i}")
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=look) for _ in range(4)]
    threads.append(threading.Thread(target=churn))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert answers[0] > 0
    assert sharder.nodes == tuple(stable)

"""Drop-in compatibility: the same operations on cachetools and scalekit give the
same results, the same contents and the same eviction order."""

from __future__ import annotations

import pickle
from typing import Any

import cachetools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scalekit.cache as sk
from scalekit.testing import FakeClock

KEYS = st.integers(0, 9)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.integers(0, 7)),
        st.tuples(st.just("getitem"), KEYS),
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("contains"), KEYS),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("pop"), KEYS),
        st.tuples(st.just("setdefault"), KEYS, st.integers(0, 7)),
        st.tuples(st.just("popitem")),
        st.tuples(st.just("len")),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.5])),
    ),
    max_size=60,
)


def _apply(cache: Any, clock: FakeClock, operation: tuple[Any, ...]) -> Any:
    name = operation[0]
    try:
        if name == "set":
            cache[operation[1]] = operation[2]
            return None
        if name == "getitem":
            return cache[operation[1]]
        if name == "get":
            return cache.get(operation[1])
        if name == "contains":
            return operation[1] in cache
        if name == "delete":
            del cache[operation[1]]
            return None
        if name == "pop":
            return cache.pop(operation[1], "default")
        if name == "setdefault":
            return cache.setdefault(operation[1], operation[2])
        if name == "popitem":
            return cache.popitem()
        if name == "len":
            return len(cache)
        clock.advance(operation[1])
        return None
    except KeyError:
        return "KeyError"
    except ValueError:
        return "ValueError"


def _run_both(make_theirs: Any, make_ours: Any, operations: list[tuple[Any, ...]]) -> None:
    their_clock, our_clock = FakeClock(), FakeClock()
    theirs, ours = make_theirs(their_clock), make_ours(our_clock)
    for step, operation in enumerate(operations):
        expected = _apply(theirs, their_clock, operation)
        actual = _apply(ours, our_clock, operation)
        assert actual == expected, f"step {step}: {operation} gave {actual!r}, not {expected!r}"
        assert sorted(ours) == sorted(theirs)
        assert ours.currsize == theirs.currsize
        ours._check()
    # The eviction order of what is left: drain both.
    drained_theirs = [theirs.popitem() for _ in range(len(theirs))]
    drained_ours = [ours.popitem() for _ in range(len(ours))]
    assert drained_ours == drained_theirs


POLICIES = ["LRUCache", "LFUCache", "FIFOCache"]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("stats", [False, True])
@given(maxsize=st.integers(0, 5), operations=OPERATIONS)
@settings(max_examples=150)
def test_same_behaviour_as_cachetools(
    policy: str, stats: bool, maxsize: int, operations: list[tuple[Any, ...]]
) -> None:
    _run_both(
        lambda clock: getattr(cachetools, policy)(maxsize),
        lambda clock: getattr(sk, policy)(maxsize, stats=stats),
        operations,
    )


@pytest.mark.parametrize("policy", POLICIES)
@given(maxsize=st.integers(0, 12), operations=OPERATIONS)
@settings(max_examples=150)
def test_same_behaviour_with_getsizeof(
    policy: str, maxsize: int, operations: list[tuple[Any, ...]]
) -> None:
    def size(value: int) -> int:
        return value % 5

    _run_both(
        lambda clock: getattr(cachetools, policy)(maxsize, getsizeof=size),
        lambda clock: getattr(sk, policy)(maxsize, getsizeof=size),
        operations,
    )


@pytest.mark.parametrize("stats", [False, True])
@given(maxsize=st.integers(1, 5), ttl=st.sampled_from([1.0, 2.0, 5.0]), operations=OPERATIONS)
@settings(max_examples=200)
def test_ttl_cache_same_behaviour_as_cachetools(
    stats: bool, maxsize: int, ttl: float, operations: list[tuple[Any, ...]]
) -> None:
    _run_both(
        lambda clock: cachetools.TTLCache(maxsize, ttl, timer=clock),
        lambda clock: sk.TTLCache(maxsize, ttl, timer=clock, stats=stats),
        operations,
    )


def test_subclass_overriding_popitem_sees_every_eviction() -> None:
    """The cachetools idiom for observing evictions keeps working."""
    seen: list[tuple[str, int]] = []

    class Observed(sk.LRUCache[str, int]):
        def popitem(self) -> tuple[str, int]:
            item = super().popitem()
            seen.append(item)
            return item

    cache = Observed(maxsize=2)
    cache["a"], cache["b"] = 1, 2
    cache["a"]
    cache["c"] = 3
    cache["d"] = 4
    assert seen == [("b", 2), ("a", 1)]
    assert sorted(cache) == ["c", "d"]
    cache._check()


def test_missing_hook_computes_and_stores_as_in_cachetools() -> None:
    class Squares(sk.LRUCache[int, int]):
        def __missing__(self, key: int) -> int:
            self[key] = key * key
            return key * key

    cache = Squares(maxsize=2)
    assert cache[3] == 9
    assert 3 in cache
    assert cache.get(4) is None  # get never calls __missing__, as in cachetools
    assert 4 not in cache


@pytest.mark.parametrize("policy", [*POLICIES, "TTLCache"])
def test_constructor_signatures_match(policy: str) -> None:
    args: tuple[Any, ...] = (10, 60) if policy == "TTLCache" else (10,)
    ours, theirs = getattr(sk, policy)(*args), getattr(cachetools, policy)(*args)
    assert ours.maxsize == theirs.maxsize
    assert ours.getsizeof("x") == theirs.getsizeof("x") == 1
    if policy == "TTLCache":
        assert ours.ttl == theirs.ttl == 60
    restored = pickle.loads(pickle.dumps(ours))
    assert isinstance(restored, getattr(sk, policy))

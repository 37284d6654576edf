"""``_check()`` in ordinary use, hostile arguments, and keys no C hash may see.

- Issue 13, item 15: ``_check()`` failed after 70 sets with a TTL and 70 pops
  ("heap 70 > 2*0+65"): stale heap entries were compacted on a push only.
- Item 12: every number a cache takes goes through ``scalekit._validate``; a
  refused call raises an error of ``scalekit.errors`` naming the argument and
  changes nothing.
- Item 1: a ``str`` holding a lone surrogate crashes mmh3; the TinyLFU sketch
  must never hand one to a C hash (it uses the builtin ``hash``), proven in a
  subprocess so that a crash fails the test instead of killing the run.
"""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache import (
    FIFOCache,
    FrequencySketch,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TinyLFUCache,
    TTLCache,
)
from scalekit.errors import ArgumentTypeError, ConfigurationError, ScalekitError
from scalekit.testing import FakeClock

SRC = Path(__file__).resolve().parents[2] / "src"
POLICIES = [LRUCache, LFUCache, FIFOCache, TinyLFUCache]

# -- item 15: the expiry heap stays within its bound -----------------------------


@pytest.mark.parametrize("cls", POLICIES)
@pytest.mark.parametrize("removal", ["pop", "del", "delete", "overwrite", "evict"])
def test_check_holds_after_many_items_with_their_own_ttl_are_removed(
    cls: type[Any], removal: str
) -> None:
    clock = FakeClock()
    cache = cls(100, timer=clock) if removal != "evict" else cls(70, ttl=50, timer=clock)
    for i in range(70):
        cache.set(i, i, ttl=10)
        cache._check()
    for i in range(70):
        if removal == "pop":
            cache.pop(i)
        elif removal == "del":
            del cache[i]
        elif removal == "delete":
            assert cache.delete(i)
        elif removal == "overwrite":
            cache[i] = -i  # no ttl of its own any more: the heap entry goes stale
        else:
            cache[1000 + i] = i  # the cache's own ttl evicts the items with their own
        cache._check()
    assert len(cache._expiry_heap) <= 2 * len(cache._own_expires) + 64


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["set_ttl", "set", "pop", "advance"]),
            st.integers(0, 150),
            st.sampled_from([0.5, 1.0, 3.0, math.inf]),
        ),
        max_size=400,
    )
)
def test_check_holds_along_long_random_runs(steps: list[tuple[str, int, float]]) -> None:
    clock = FakeClock()
    cache: LRUCache[int, int] = LRUCache(120, ttl=2.0, timer=clock)
    for op, key, ttl in steps:
        if op == "set_ttl":
            cache.set(key, key, ttl=ttl)
        elif op == "set":
            cache[key] = key
        elif op == "pop":
            cache.pop(key, None)
        else:
            clock.advance(ttl if ttl != math.inf else 0.25)
        cache._check()


# -- item 12: hostile numbers and types ------------------------------------------

BAD_TTLS = [10**400, 1e308, math.nan, -math.inf, 0, -1, True, False, "5", [1], 1e10]


def snapshot(cache: Any) -> Any:
    return (list(cache.items()), len(cache), cache.currsize, cache.ttl_of("k"))


@pytest.mark.parametrize("cls", POLICIES)
@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_a_bad_ttl_is_refused_everywhere_and_changes_nothing(cls: type[Any], ttl: Any) -> None:
    clock = FakeClock()
    cache = cls(2, timer=clock)
    cache.set("k", 1, ttl=5)
    cache["other"] = 2
    before = snapshot(cache)
    for call in (
        lambda: cache.set("k", 9, ttl=ttl),
        lambda: cache.set("new", 9, ttl=ttl),  # would evict
        lambda: cache.add("new", 9, ttl=ttl),
        lambda: cache.add("k", 9, ttl=ttl),  # present: still refused, not ignored
        lambda: cache.set_many({"new": 9}, ttl=ttl),
    ):
        with pytest.raises(ScalekitError, match="ttl") as excinfo:
            call()
        assert isinstance(excinfo.value, (ArgumentTypeError, ConfigurationError))
        assert snapshot(cache) == before
    with pytest.raises(ScalekitError, match="ttl"):
        cls(2, ttl=ttl)


def test_an_overflowing_ttl_no_longer_keeps_the_key_forever() -> None:
    cache: LRUCache[str, int] = LRUCache(10)
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.set("k", 1, ttl=10**400)  # was OverflowError, with "k" stored forever
    assert "k" not in cache
    assert len(cache) == 0


@pytest.mark.parametrize("cls", [*POLICIES, TTLCache])
@pytest.mark.parametrize("maxsize", [10**400, 1e308, math.nan, -math.inf, -1, True, "3", None])
def test_a_bad_maxsize_is_refused_naming_it(cls: type[Any], maxsize: Any) -> None:
    args = (maxsize, 10) if cls is TTLCache else (maxsize,)
    with pytest.raises(ScalekitError, match="maxsize"):
        cls(*args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"timer": 5}, "timer"),
        ({"on_evict": "x"}, "on_evict"),
        ({"getsizeof": 1}, "getsizeof"),
        ({"stats": 1}, "stats"),
        ({"stats": None}, "stats"),
    ],
)
@pytest.mark.parametrize("cls", POLICIES)
def test_bad_callables_and_flags_are_refused(
    cls: type[Any], kwargs: dict[str, Any], name: str
) -> None:
    with pytest.raises(ArgumentTypeError, match=name):
        cls(3, **kwargs)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5, math.nan, math.inf, True, "0.1", 10**400])
def test_tinylfu_window_fraction_is_checked(fraction: Any) -> None:
    with pytest.raises(ScalekitError, match="window_fraction"):
        TinyLFUCache(100, window_fraction=fraction)


@pytest.mark.parametrize("capacity", [0, -1, True, 1.5, math.nan, 10**400, None])
def test_frequency_sketch_capacity_is_checked(capacity: Any) -> None:
    with pytest.raises(ScalekitError, match="capacity"):
        FrequencySketch(capacity)


@pytest.mark.parametrize("time", [math.nan, math.inf, -math.inf, 10**400, "now", True])
def test_expire_at_a_bad_time_purges_nothing(time: Any) -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, ttl=5, timer=clock)
    cache["a"] = 1
    cache.set("b", 2, ttl=1)
    with pytest.raises(ScalekitError, match="time"):
        cache.expire(time)  # expire(nan) purged everything
    assert dict(cache.items()) == {"a": 1, "b": 2}
    assert cache.expire(1.0) == [("b", 2)]


@pytest.mark.parametrize("items", [None, [("a", 1)], "ab", 5])
@pytest.mark.parametrize("cls", POLICIES)
def test_set_many_of_a_non_mapping_is_a_type_error(cls: type[Any], items: Any) -> None:
    cache = cls(3)
    cache["k"] = 1
    with pytest.raises(ArgumentTypeError, match="items"):
        cache.set_many(items)  # LRUCache.set_many(None) raised AttributeError
    assert dict(cache.items()) == {"k": 1}


@pytest.mark.parametrize("keys", [None, 5, "ab"])
def test_get_many_of_a_non_iterable_is_a_type_error(keys: Any) -> None:
    cache: LRUCache[str, int] = LRUCache(3)
    with pytest.raises(ArgumentTypeError, match="keys"):
        cache.get_many(keys)


@pytest.mark.parametrize("cls", POLICIES)
def test_timedelta_ttls_are_seconds(cls: type[Any]) -> None:
    clock = FakeClock()
    cache = cls(10, ttl=timedelta(minutes=1), timer=clock)
    assert cache.ttl == 60.0
    cache["a"] = 1
    cache.set("b", 2, ttl=timedelta(seconds=5))
    assert cache.ttl_of("a") == 60.0
    assert cache.ttl_of("b") == 5.0
    clock.advance(5)
    assert "b" not in cache
    assert "a" in cache
    with pytest.raises(ConfigurationError, match="ttl"):
        cache.set("c", 3, ttl=timedelta(0))


def test_thread_safe_cache_checks_its_arguments() -> None:
    with pytest.raises(ArgumentTypeError, match="cache"):
        ThreadSafeCache(None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="lock"):
        ThreadSafeCache(LRUCache(3), lock=5)  # type: ignore[arg-type]


# -- item 1: lone surrogates never reach a C hash --------------------------------

SURROGATE_SCRIPT = """
from scalekit.cache import FrequencySketch, TinyLFUCache
cache = TinyLFUCache(maxsize=50)
keys = ["\\ud800", "\\udfff", "a\\ud800b", ("\\ud800", 1)]
for round in range(20):
    for i, key in enumerate(keys):
        cache[key] = i
        cache.get(key)
    for i in range(60):
        cache[f"scan\\ud800{i}"] = i
sketch = FrequencySketch(capacity=10)
sketch.increment("\\ud800")
assert sketch.frequency("\\ud800") == 1
cache._check()
print("survived", len(cache))
"""


def test_tinylfu_with_lone_surrogate_keys_does_not_crash_the_interpreter() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SURROGATE_SCRIPT],
        env={"PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("survived")


# -- with cache.timer ------------------------------------------------------------


class Ticker:
    """A picklable manual clock (FakeClock holds a lock)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("cls", [*POLICIES, TTLCache])
def test_a_copy_made_while_the_timer_is_held_runs_on_its_own_clock(
    cls: type[Any], how: str
) -> None:
    cache = cls(10, ttl=5, timer=Ticker()) if cls is not TTLCache else cls(10, 5, Ticker())
    cache["k"] = 1
    with cache.timer as now:
        assert now == 0.0
        if how == "copy":
            clone = copy.copy(cache)
        elif how == "deepcopy":
            clone = copy.deepcopy(cache)
        else:
            clone = pickle.loads(pickle.dumps(cache))
        assert clone.timer is not cache.timer
    clone.timer.advance(5)  # the clone's clock (a copy of the ticker, or the same one)
    assert "k" not in clone, "the copy still reads the time held when it was made"
    assert clone.timer() == 5.0

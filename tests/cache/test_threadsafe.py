"""Tests of ``ThreadSafeCache``, and of ``cached`` guarding an unlocked cache across threads.

The stress tests run threads doing random operations on one shared cache, with a
short thread switch interval so operations interleave often, then check the
cache's internal invariants (``_check()``) and that its counters agree with what
the threads saw.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from scalekit.cache import (
    Cache,
    CacheInfo,
    FIFOCache,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TTLCache,
    cached,
)
from scalekit.errors import ItemTooLarge
from scalekit.testing import FakeClock

TIMEOUT = 10.0  # seconds; only reached when a test is failing
N_THREADS = 8
OPS_PER_THREAD = 4000
MISSING: Any = object()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every 20 µs instead of 5 ms, so operations interleave more."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together; return the results, re-raise errors."""
    barrier = threading.Barrier(n)
    results: list[Any] = [MISSING] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        barrier.wait(TIMEOUT)
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert not any(thread.is_alive() for thread in threads), "a thread never finished"
    if errors:
        raise errors[0]
    return results


# -- the stress test -------------------------------------------------------------


def make_cache(
    policy: str, variant: str, clock: FakeClock, on_evict: Callable[..., object]
) -> Cache[Any, Any]:
    """``variant``: "plain" (no extras: the lean twin), "stats", or "getsizeof" (and stats)."""
    extras: dict[str, Any] = {}
    if variant != "plain":
        extras.update(stats=True, on_evict=on_evict)
    if variant == "getsizeof":
        extras["getsizeof"] = lambda value: value[3]
    maxsize = 120 if variant == "getsizeof" else 48
    if policy == "TTLCache":
        return TTLCache(maxsize, ttl=20, timer=clock, **extras)
    cls = {"LRUCache": LRUCache, "LFUCache": LFUCache, "FIFOCache": FIFOCache}[policy]
    return cls(maxsize, timer=clock, **extras)


OPERATIONS = [
    "set",
    "set",
    "set_ttl",
    "get",
    "get",
    "getitem",
    "getitem",
    "del",
    "pop",
    "setdefault",
    "contains",
    "len",
    "iter",
    "items",
    "popitem",
    "expire",
    "advance",
]


class Tally:
    """What one thread saw; values are ``(key, thread, seq, size)``, unique per store."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.removed: list[tuple[int, int]] = []  # (thread, seq) of values popped


@pytest.mark.parametrize("variant", ["plain", "stats", "getsizeof"])
@pytest.mark.parametrize("policy", ["LRUCache", "LFUCache", "FIFOCache", "TTLCache"])
def test_threadsafe_cache_stress(policy: str, variant: str, fast_switching: None) -> None:
    clock = FakeClock()
    evicted: Counter[str] = Counter()
    evicted_values: list[tuple[int, int]] = []
    listener_lock = threading.Lock()

    def on_evict(key: int, value: tuple[int, int, int, int], cause: str) -> None:
        assert value[0] == key
        with listener_lock:
            evicted[cause] += 1
            evicted_values.append(value[1:3])

    cache = ThreadSafeCache(make_cache(policy, variant, clock, on_evict))
    maxsize = cache.maxsize
    sized = variant == "getsizeof"

    def check_value(key: Any, value: Any) -> None:
        assert isinstance(value, tuple)
        assert value[0] == key, (key, value)

    def worker(tid: int) -> Tally:
        rng = random.Random(1000 * tid + len(policy) + len(variant))
        tally = Tally()
        for seq in range(OPS_PER_THREAD):
            op = rng.choice(OPERATIONS)
            key = rng.randrange(96)
            size = 1000 if sized and rng.random() < 0.01 else rng.randint(1, 6)
            value = (key, tid, seq, size)
            tally.counts[op] += 1
            try:
                if op == "set":
                    cache[key] = value
                elif op == "set_ttl":
                    cache.set(key, value, ttl=rng.choice([0.5, 1, 3, math.inf]))
                elif op == "get":
                    found = cache.get(key, MISSING)
                    if found is not MISSING:
                        check_value(key, found)
                        tally.counts["hit"] += 1
                elif op == "getitem":
                    try:
                        check_value(key, cache[key])
                        tally.counts["hit"] += 1
                    except KeyError:
                        pass
                elif op == "del":
                    with contextlib.suppress(KeyError):
                        del cache[key]
                elif op == "pop":
                    found = cache.pop(key, MISSING)
                    if found is not MISSING:
                        check_value(key, found)
                        tally.removed.append(found[1:3])
                elif op == "setdefault":
                    found = cache.setdefault(key, value)
                    check_value(key, found)
                    if found is not value:
                        tally.counts["setdefault_hit"] += 1
                elif op == "contains":
                    assert isinstance(key in cache, bool)
                elif op == "len":
                    assert 0 <= len(cache) <= maxsize
                elif op == "iter":
                    keys = list(cache)
                    assert len(keys) == len(set(keys)) <= maxsize
                elif op == "items":
                    for item_key, item_value in cache.items():
                        check_value(item_key, item_value)
                elif op == "popitem":
                    try:
                        popped_key, popped = cache.popitem()
                    except KeyError:
                        pass
                    else:
                        check_value(popped_key, popped)
                        tally.removed.append(popped[1:3])
                elif op == "expire":
                    for expired_key, expired in cache.expire():
                        check_value(expired_key, expired)
                else:
                    clock.advance(rng.choice([0.1, 0.25, 0.5]))
            except ItemTooLarge:
                assert size > maxsize
                tally.counts["too_large"] += 1
            if seq % 500 == 0:
                cache._check()
        return tally

    tallies = run_threads(N_THREADS, worker)

    cache._check()
    assert cache.currsize <= maxsize
    assert len(cache) == len(list(cache)) == len(cache.items())
    for key, value in cache.items():
        check_value(key, value)

    counts: Counter[str] = sum((tally.counts for tally in tallies), Counter())
    assert sum(counts[op] for op in set(OPERATIONS)) == N_THREADS * OPS_PER_THREAD
    if sized:
        assert counts["too_large"] > 0

    if variant == "plain":
        return  # no stats, no listener: the lean twin is checked by _check() alone

    # Lookups: every get and cache[key] counted once, hits exactly those the threads
    # saw. setdefault may count as a lookup too (it reads before it writes).
    stats = cache.stats()
    lookups = counts["get"] + counts["getitem"]
    assert stats.lookups - lookups in (0, counts["setdefault"])
    assert stats.hits - counts["hit"] in (0, counts["setdefault_hit"])
    assert (stats.lookups == lookups) == (stats.hits == counts["hit"])
    assert stats.hits > 0
    assert stats.misses > 0

    # Evictions and expirations: the counters agree with the listener's calls.
    assert stats.evictions == evicted["size"]
    assert stats.expirations == evicted["expired"]
    assert stats.evictions > 0
    assert stats.expirations > 0

    # No value was removed twice, and none that was removed is still in the cache.
    removed = [value for tally in tallies for value in tally.removed] + evicted_values
    assert len(removed) == len(set(removed))
    assert not set(removed) & {value[1:3] for value in cache.values()}


# -- the decorator guarding a plain cache ------------------------------------------

DECORATOR_CACHES: dict[str, Callable[[], Cache[Any, Any]]] = {
    "LRUCache": lambda: LRUCache(maxsize=64),
    "LFUCache": lambda: LFUCache(maxsize=64),
    "FIFOCache": lambda: FIFOCache(maxsize=64),
    "LRUCache-getsizeof": lambda: LRUCache(maxsize=150, getsizeof=lambda value: value[1]),
}


@pytest.mark.parametrize("make", list(DECORATOR_CACHES.values()), ids=list(DECORATOR_CACHES))
def test_cached_guards_an_unlocked_cache_across_threads(
    make: Callable[[], Cache[Any, Any]], fast_switching: None
) -> None:
    cache = make()  # not wrapped: the decorator's own lock must protect it
    calls_lock = threading.Lock()
    calls: Counter[int] = Counter()

    @cached(cache)
    def compute(x: int) -> tuple[int, int]:
        with calls_lock:
            calls[x] += 1
        return (x * x, 1 + x % 4)

    def worker(tid: int) -> int:
        rng = random.Random(tid)
        for _ in range(OPS_PER_THREAD):
            x = rng.randrange(200)
            assert compute(x) == (x * x, 1 + x % 4)
        return OPS_PER_THREAD

    total = sum(run_threads(N_THREADS, worker))

    cache._check()
    assert cache.currsize <= cache.maxsize
    info = compute.cache_info()
    assert info.misses == sum(calls.values())  # misses are calls of the function
    assert info.hits + info.misses == total
    assert info.hits > 0
    assert info.currsize == cache.currsize
    for key in cache:
        (x,) = key
        assert cache.peek(key) == (x * x, 1 + x % 4)


def test_cached_with_ttl_cache_across_threads(fast_switching: None) -> None:
    clock = FakeClock()
    # Fewer keys than room: items leave only by expiring, never to make room.
    cache = TTLCache(maxsize=64, ttl=1, timer=clock, stats=True)
    calls_lock = threading.Lock()
    calls = 0

    @cached(cache)
    def compute(x: int) -> int:
        nonlocal calls
        with calls_lock:
            calls += 1
        return -x

    def worker(tid: int) -> None:
        rng = random.Random(tid)
        for i in range(OPS_PER_THREAD):
            x = rng.randrange(48)
            assert compute(x) == -x
            if tid == 0 and i % 50 == 0:
                clock.advance(0.3)

    run_threads(N_THREADS, worker)

    cache._check()
    info = compute.cache_info()
    stats = cache.stats()
    assert info.misses == calls
    assert info.hits + info.misses == N_THREADS * OPS_PER_THREAD
    assert stats.evictions == 0
    # Thread 0 alone moves the clock 24 s in 1 s steps of its own calls: results go stale.
    assert stats.expirations > 0
    assert calls > 48
    assert cache.currsize <= 48


# -- ThreadSafeCache, one operation at a time ---------------------------------------


class EnteredLock:
    """A reentrant lock that counts how often it was entered."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.entries = 0

    def __enter__(self) -> EnteredLock:
        self._lock.acquire()
        self.entries += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def test_every_operation_takes_the_lock() -> None:
    clock = FakeClock()
    lock = EnteredLock()
    cache = ThreadSafeCache(LRUCache(maxsize=10, timer=clock, stats=True), lock=lock)
    assert cache.lock is lock
    cache["seed"] = 0

    operations: dict[str, Callable[[], Any]] = {
        "setitem": lambda: cache.__setitem__("a", 1),
        "getitem": lambda: cache["a"],
        "delitem": lambda: cache.__delitem__("a"),
        "contains": lambda: "a" in cache,
        "len": lambda: len(cache),
        "iter": lambda: list(iter(cache)),
        "repr": lambda: repr(cache),
        "get": lambda: cache.get("a"),
        "peek": lambda: cache.peek("seed"),
        "set": lambda: cache.set("b", 2, ttl=5),
        "get_many": lambda: cache.get_many(["b", "seed"]),
        "set_many": lambda: cache.set_many({"c": 3, "d": 4}),
        "delete": lambda: cache.delete("c"),
        "pop": lambda: cache.pop("d", None),
        "setdefault": lambda: cache.setdefault("e", 5),
        "popitem": lambda: cache.popitem(),
        "items": lambda: cache.items(),
        "values": lambda: cache.values(),
        "keys": lambda: cache.keys(),
        "ttl_of": lambda: cache.ttl_of("e"),
        "expire": lambda: cache.expire(),
        "stats": lambda: cache.stats(),
        "reset_stats": lambda: cache.reset_stats(),
        "currsize": lambda: cache.currsize,
        "check": lambda: cache._check(),
        "clear": lambda: cache.clear(),
    }
    for name, operation in operations.items():
        before = lock.entries
        operation()
        assert lock.entries > before, f"{name} did not take the lock"


def test_operations_pass_through_to_the_wrapped_cache() -> None:
    clock = FakeClock()
    inner = LRUCache(maxsize=3, timer=clock, stats=True)
    cache = ThreadSafeCache(inner)

    cache["a"] = 1
    cache.set("b", 2, ttl=10)
    cache.set_many({"c": 3})
    assert cache["a"] == 1  # "a" is now the most recently used
    cache["d"] = 4  # evicts "b", the least recently used
    assert sorted(cache) == ["a", "c", "d"]
    assert sorted(inner) == ["a", "c", "d"]
    assert cache.maxsize == 3
    assert cache.currsize == 3
    assert cache.get("b", "gone") == "gone"
    assert cache.peek("c") == 3
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "c": 3}
    assert cache.ttl_of("a") is None
    assert cache.pop("a") == 1
    assert cache.pop("a", None) is None
    with pytest.raises(KeyError):
        cache.pop("a")
    assert cache.delete("c") is True
    assert cache.delete("c") is False
    assert cache.popitem() == ("d", 4)
    with pytest.raises(KeyError):
        cache.popitem()
    cache.set("t", 1, ttl=2)
    clock.advance(2)
    assert "t" not in cache
    assert cache.expire() == [("t", 1)]
    stats = cache.stats()
    assert stats == inner.stats()
    assert stats.hits == 3  # cache["a"], get_many's "a" and "c"
    assert stats.misses == 2  # get("b"), get_many's "b"
    cache.reset_stats()
    assert cache.stats().lookups == 0
    assert cache.setdefault("s", 1) == 1
    assert cache.setdefault("s", 2) == 1
    assert repr(cache) == f"ThreadSafeCache({inner!r})"


def test_iteration_walks_a_snapshot() -> None:
    cache = ThreadSafeCache(FIFOCache(maxsize=10))
    for i in range(5):
        cache[i] = i
    for key in cache:
        del cache[key]  # would break a live iterator
    assert len(cache) == 0
    for i in range(5):
        cache[i] = i
    keys, values, items = cache.keys(), cache.values(), cache.items()
    cache.clear()
    assert keys == [0, 1, 2, 3, 4]
    assert values == [0, 1, 2, 3, 4]
    assert items == [(i, i) for i in range(5)]


def test_an_eviction_listener_can_use_the_cache() -> None:
    seen: list[tuple[Any, int]] = []
    holder: dict[str, ThreadSafeCache[Any, Any]] = {}

    def on_evict(key: Any, value: Any, cause: str) -> None:
        # Runs while the cache's lock is held: the default lock must be reentrant.
        seen.append((key, len(holder["cache"])))

    holder["cache"] = cache = ThreadSafeCache(LRUCache(maxsize=2, on_evict=on_evict))

    def fill() -> None:
        for i in range(4):
            cache[i] = i

    run_threads(1, lambda _: fill())
    assert seen == [(0, 2), (1, 2)]


def test_holding_the_lock_makes_read_modify_write_atomic(fast_switching: None) -> None:
    cache = ThreadSafeCache(LRUCache(maxsize=10))
    increments = 500

    def worker(tid: int) -> None:
        for _ in range(increments):
            with cache.lock:
                cache["counter"] = cache.get("counter", 0) + 1

    run_threads(N_THREADS, worker)
    assert cache["counter"] == N_THREADS * increments


def test_holding_the_lock_blocks_other_threads() -> None:
    cache = ThreadSafeCache(LRUCache(maxsize=10))
    writer_started = threading.Event()
    writer_done = threading.Event()

    def writer() -> None:
        writer_started.set()
        cache["x"] = 1
        writer_done.set()

    with cache.lock:
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        assert writer_started.wait(TIMEOUT)
        # A bounded wait for something that must NOT happen while we hold the lock.
        assert not writer_done.wait(0.05)
        assert "x" not in cache.cache
    assert writer_done.wait(TIMEOUT)
    thread.join(TIMEOUT)
    assert cache["x"] == 1


def test_a_shared_lock_is_used() -> None:
    lock = threading.RLock()
    first = ThreadSafeCache(LRUCache(maxsize=4), lock=lock)
    second = ThreadSafeCache(LFUCache(maxsize=4), lock=lock)
    assert first.lock is second.lock is lock
    with lock:  # one lock for both: an atomic move between them
        second["k"] = first.pop("k", "default")
    assert second["k"] == "default"


def test_cached_over_a_threadsafe_cache() -> None:
    inner = LRUCache(maxsize=4)
    cache = ThreadSafeCache(inner)

    @cached(cache)
    def square(x: int) -> int:
        return x * x

    assert [square(i % 6) for i in range(12)] == [(i % 6) ** 2 for i in range(12)]
    info = square.cache_info()
    assert info == CacheInfo(hits=0, misses=12, maxsize=4, currsize=4)
    inner._check()

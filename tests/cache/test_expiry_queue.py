"""The expiry queue of the cache's own ``ttl``: lazy deletion, compaction, a clock going back.

Keys written with the cache's ``ttl`` are kept in ``_expires`` (a dict in write
order) and in ``_expiry_queue`` (``key, deadline`` pairs in write order), where
an overwrite or a removal leaves a stale entry behind, recognised by the
identity of its deadline. A stateful test drives overwrites (bursts of one key),
deletions, per-item TTLs, reads, evictions, a clock moving both ways, copies and
pickles against a plain model, with ``_check()`` as the invariant: the live queue
entries are ``_expires`` in order, the queued deadlines are sorted, the queue
stays within ``2 * len(_expires) + 64`` entries, ``_next_expiry`` is a lower bound.
"""

from __future__ import annotations

import copy
import math
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from scalekit.cache import Cache, FIFOCache, LFUCache, LRUCache, TinyLFUCache, TTLCache

INF = math.inf
N_KEYS = 6
KEYS = st.integers(0, N_KEYS - 1)
BIG = 10**20  # keys are big ints made afresh each time: equal, never identical
MISSING: Any = object()


def fresh(key: int) -> int:
    return int(str(BIG + key))


class Clock:
    """A clock a test sets at will, backwards too."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An eviction listener noting the time of each call (it pickles, with its clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[Any, Any, str, float]] = []

    def __call__(self, key: Any, value: Any, cause: str) -> None:
        self.events.append((key, value, cause, self.clock.now))


def build(policy: str, maxsize: int, ttl: float, timer: Clock, extra: dict[str, Any]) -> Any:
    if policy == "TTL":
        return TTLCache(maxsize, ttl, timer, **extra)
    cls = {"LRU": LRUCache, "LFU": LFUCache, "FIFO": FIFOCache, "TinyLFU": TinyLFUCache}[policy]
    return cls(maxsize, ttl=ttl, timer=timer, **extra)


class ExpiryQueueMachine(RuleBasedStateMachine):
    """One cache with a ``ttl`` against ``key -> (value, deadline)`` and an LRU order."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.entries: dict[int, tuple[int, float]] = {}
        self.order: list[int] = []  # least recently used first (LRU and TTL only)
        self.counter = 0
        self.deadline_of: dict[int, float] = {}  # every value ever written -> its deadline
        self.cache: Cache[int, int]
        self.recorder: Recorder | None = None

    @initialize(
        policy=st.sampled_from(["TTL", "LRU", "LFU", "FIFO", "TinyLFU"]),
        maxsize=st.sampled_from([3, 2, 5]),
        ttl=st.sampled_from([1.0, 2.5]),
        mode=st.sampled_from(["lean", "stats", "listener"]),
    )
    def start(self, policy: str, maxsize: int, ttl: float, mode: str) -> None:
        self.lru = policy in ("TTL", "LRU")
        # Only LRU's eviction order is modelled: the others never fill up.
        self.maxsize = maxsize if self.lru else 1000
        self.ttl = ttl
        extra: dict[str, Any] = {}
        if mode == "stats":
            extra["stats"] = True
        elif mode == "listener":
            extra["on_evict"] = self.recorder = Recorder(self.clock)
        self.cache = build(policy, self.maxsize, ttl, self.clock, extra)

    # -- the model --------------------------------------------------------------

    def live(self, key: int) -> bool:
        entry = self.entries.get(key)
        return entry is not None and self.clock.now < entry[1]

    def drop_expired(self) -> None:
        for key in [k for k in self.entries if not self.live(k)]:
            del self.entries[key]
            if self.lru:
                self.order.remove(key)

    def used(self, key: int) -> None:
        if self.lru:
            if key in self.order:
                self.order.remove(key)
            self.order.append(key)

    def model_write(self, key: int, ttl: float) -> int:
        self.drop_expired()  # every write purges what has expired first
        if key not in self.entries and len(self.entries) >= self.maxsize:
            victim = self.order.pop(0)
            del self.entries[victim]
        self.counter += 1
        self.entries[key] = (self.counter, self.clock.now + ttl)
        self.deadline_of[self.counter] = self.clock.now + ttl
        self.used(key)
        return self.counter

    # -- rules ------------------------------------------------------------------

    @rule(key=KEYS, how=st.sampled_from(["setitem", "set"]))
    def write(self, key: int, how: str) -> None:
        value = self.model_write(key, self.ttl)
        if how == "setitem":
            self.cache[fresh(key)] = value
        else:
            self.cache.set(fresh(key), value)

    @rule(key=KEYS, times=st.integers(2, 300), step=st.sampled_from([0.0, 0.001, 0.3]))
    def rewrite_many(self, key: int, times: int, step: float) -> None:
        """Many stale queue entries of one key: the queue must compact."""
        for _ in range(times):
            self.clock.now += step
            self.cache[fresh(key)] = self.model_write(key, self.ttl)

    @rule(key=KEYS, ttl=st.sampled_from([0.5, 1.0, 3.0, INF]))
    def write_own_ttl(self, key: int, ttl: float) -> None:
        self.cache.set(fresh(key), self.model_write(key, ttl), ttl=ttl)

    @rule(key=KEYS, how=st.sampled_from(["getitem", "get"]))
    def read(self, key: int, how: str) -> None:
        expected = self.entries[key][0] if self.live(key) else MISSING
        if how == "getitem":
            try:
                got = self.cache[fresh(key)]
            except KeyError:
                got = MISSING
        else:
            got = self.cache.get(fresh(key), MISSING)
        assert got == expected
        if expected is MISSING:
            if key in self.entries:  # an expired key read is removed
                del self.entries[key]
                if self.lru:
                    self.order.remove(key)
        else:
            self.used(key)

    @rule(key=KEYS, how=st.sampled_from(["del", "pop", "delete"]))
    def remove(self, key: int, how: str) -> None:
        live = self.live(key)
        if how == "del":
            if live:
                del self.cache[fresh(key)]
            else:
                with pytest.raises(KeyError):
                    del self.cache[fresh(key)]
        elif how == "pop":
            got = self.cache.pop(fresh(key), MISSING)
            assert got == (self.entries[key][0] if live else MISSING)
        else:
            assert self.cache.delete(fresh(key)) is live
        if how == "pop" and not live:
            return  # pop() leaves an expired item for a purge to report
        if key in self.entries:
            del self.entries[key]
            if self.lru:
                self.order.remove(key)

    @rule(step=st.sampled_from([0.25, 0.5, 1.0, 3.0, "deadline"]))
    def advance(self, step: float | str) -> None:
        if isinstance(step, float):
            self.clock.now += step
            return
        now = self.clock.now
        deadlines = [d for _, d in self.entries.values() if now < d < INF]
        if deadlines:
            self.clock.now = min(deadlines)  # exactly on it: that item is expired now

    @rule(step=st.sampled_from([0.25, 1.0, 5.0]))
    def rewind(self, step: float) -> None:
        """The clock goes backwards; what has expired is purged first, so that
        the model need not know when the cache would have purged it."""
        self.cache.expire()
        self.drop_expired()
        self.clock.now -= step

    @rule()
    def purge(self) -> None:
        expired = {k for k in self.entries if not self.live(k)}
        assert {k - BIG for k, _ in self.cache.expire()} == expired
        self.drop_expired()

    @rule(what=st.sampled_from(["copy", "pickle", "clear"]))
    def housekeeping(self, what: str) -> None:
        if what == "clear":
            self.cache.clear()
            self.entries.clear()
            self.order.clear()
        elif what == "copy":
            self.cache = copy.copy(self.cache)
        else:
            self.cache = pickle.loads(pickle.dumps(self.cache))
            self.clock = self.cache.timer._timer  # the clone has a clock of its own
            if self.recorder is not None:
                self.recorder = self.cache._on_evict  # type: ignore[assignment]

    # -- checked after every step -------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.cache._check()

    @invariant()
    def nothing_expired_early(self) -> None:
        if self.recorder is not None:
            for _, value, cause, now in self.recorder.events:
                assert cause == "size" or self.deadline_of[value] <= now
            self.recorder.events.clear()

    @invariant()
    def agrees_with_model(self) -> None:
        cache = self.cache
        now = self.clock.now
        for key in range(N_KEYS):
            if self.live(key):
                value, deadline = self.entries[key]
                assert cache.peek(fresh(key), MISSING) == value
                assert cache.ttl_of(fresh(key)) == (None if deadline == INF else deadline - now)
            else:
                assert fresh(key) not in cache
        assert sorted(k - BIG for k in cache) == sorted(k for k in self.entries if self.live(k))


TestExpiryQueue = ExpiryQueueMachine.TestCase
TestExpiryQueue.settings = settings(
    max_examples=2 * settings().max_examples,
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)


@pytest.mark.parametrize("cls", [TTLCache, LRUCache, LFUCache, FIFOCache, TinyLFUCache])
def test_a_key_rewritten_many_times_expires_once_and_the_queue_stays_bounded(
    cls: type[Any],
) -> None:
    clock = Clock()
    cache = cls(10, 5.0, clock) if cls is TTLCache else cls(10, ttl=5.0, timer=clock)
    cache["other"] = 0
    for i in range(1000):
        clock.now += 0.001
        cache["k"] = i
        assert len(cache._expiry_queue) <= 2 * (2 * len(cache._expires) + 64)
    cache._check()
    clock.now = 1000.0 + 5.0  # "other" expires; "k" was written later
    assert list(cache) == ["k"]
    assert cache["k"] == 999
    clock.now = 1000.0 + 1.0 + 5.0
    assert cache.expire() == [("k", 999)]
    cache._check()
    assert not cache._expiry_queue
    assert not cache._expires


@pytest.mark.parametrize("cls", [TTLCache, LRUCache, LFUCache])
def test_a_pickled_cache_still_expires_its_items(cls: type[Any]) -> None:
    # pickle gives back one float object per reference: the queue's deadlines are
    # no longer those of _expires unless the queue is rebuilt on loading.
    timer = Clock()
    cache = cls(10, 5.0, timer) if cls is TTLCache else cls(10, ttl=5.0, timer=timer)
    cache["a"] = 1
    cache["b"] = 2
    clone = pickle.loads(pickle.dumps(cache))
    clone._check()
    clone.timer._timer.now += 5.0  # the clone's own clock (pickled with it)
    assert clone.expire() == [("a", 1), ("b", 2)]
    assert len(clone) == 0
    clone._check()


def test_the_clock_going_backwards_puts_earlier_deadlines_aside() -> None:
    clock = Clock()
    cache = TTLCache(10, 5.0, clock)
    cache["a"] = 1  # deadline 1005
    clock.now -= 3.0
    cache["b"] = 2  # deadline 1002, before the queue's tail: kept in the heap
    assert list(cache._expires) == ["a"]
    assert list(cache._own_expires) == ["b"]
    cache._check()
    clock.now = 1002.0
    assert list(cache) == ["a"]
    clock.now = 1005.0
    assert list(cache) == []
    cache._check()

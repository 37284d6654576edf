"""Stateful tests: every cache policy, step by step, against a plain reference model.

The model keeps each stored item with its value, size, deadline, use count and a
stamp from a global tick, and derives everything from them: the victim of the
policy, what is live, the iteration order, the stats and the listener calls.

Removing an expired item is invisible except through ``stats().expirations`` and
``on_evict``, and the spec only says *when* it must have happened in a few places
(before a live item is evicted, on ``expire()``). So the model lets the cache pick
the moment: every ``(key, value, "expired")`` call is checked against an item the
model knows to be expired and only then dropped from the model, and the items the
spec says must be gone by the end of a step are "owed" until reported.
"""

from __future__ import annotations

import copy
import itertools
import math
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from scalekit.cache import (
    Cache,
    FIFOCache,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TinyLFUCache,
    TTLCache,
)
from scalekit.errors import ConfigurationError, ItemTooLarge
from scalekit.testing import FakeClock
from tests.contracts.cache_contract import stats_kwargs

INF = math.inf
N_KEYS = 8
KEYS = st.integers(0, N_KEYS - 1)
SIZES = st.integers(-1, 5)  # -1 is refused by a sized cache; 5 may exceed maxsize
MAXSIZES = st.sampled_from([3, 4, 2, 6, 1, 2.5, 0])  # simplest first
CACHE_TTLS = st.sampled_from([None, 1.0, 2.5])
ITEM_TTLS = st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, INF])
BOOM_KEY = 0  # in "raise" mode the listener raises for this key

Value = tuple[int, int]  # (size, unique id): equal values are the same value
Event = tuple[Any, Any, str]

MISSING: Any = object()
BOOMED: Any = object()


class Boom(Exception):
    """Raised by the listener in "raise" mode."""


# FakeClock holds a lock and cannot be pickled; these picklable handles let a
# pickled cache keep the machine's clock and listener log.
_clocks: dict[int, FakeClock] = {}
_logs: dict[int, list[Event]] = {}
_idents = itertools.count()


class SharedClock:
    """A picklable handle on the FakeClock of one machine."""

    def __init__(self, ident: int) -> None:
        self.ident = ident

    def __call__(self) -> float:
        return _clocks[self.ident]()


class Recorder:
    """A picklable listener: logs every call, raises for ``raise_on``."""

    def __init__(self, ident: int, raise_on: int | None) -> None:
        self.ident = ident
        self.raise_on = raise_on

    def __call__(self, key: Any, value: Any, cause: str) -> None:
        _logs[self.ident].append((key, value, cause))
        if key == self.raise_on:
            raise Boom(key)


def value_size(value: Value) -> int:
    return value[0]


def attempt(function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``function``; return its result, the exception it raised, or BOOMED."""
    try:
        return function(*args, **kwargs)
    except Boom:
        return BOOMED
    except (KeyError, ValueError, TypeError) as exc:
        return exc


@dataclass
class Entry:
    value: Value
    size: int
    deadline: float  # INF: never expires
    count: int  # LFU uses: 1 for the insert, +1 per read or overwrite
    stamp: int  # LRU: last use; FIFO: last write; LFU: when it reached ``count``
    written: int = 0  # the stamp of the last write
    default_ttl: bool = False  # its deadline is the cache's ttl


class CacheMachine(RuleBasedStateMachine):
    """One cache against the model. Subclasses pick the policy and the constructor."""

    policy: ClassVar[str] = "lru"
    cache_class: ClassVar[type[Cache[Any, Any]]] = LRUCache
    needs_ttl: ClassVar[bool] = False
    exact_victims: ClassVar[bool] = True
    """False for TinyLFU, whose victims depend on its frequency sketch: the model
    then learns them from the cache (each must be a live item, with its value)
    and checks everything else as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = next(_idents)
        self.clock = FakeClock()
        _clocks[self.ident] = self.clock
        self.log: list[Event] = []
        _logs[self.ident] = self.log
        self.seen = 0  # how much of the log the model has accounted for
        self.entries: dict[int, Entry] = {}
        self.owed: list[tuple[int, Value]] = []  # expired items the cache must report
        self.tick = 0
        self.uid = 0
        self.hits = self.misses = self.evictions = self.expirations = 0
        self.replaced: list[tuple[int, Value]] = []  # loose: old values written over

    def teardown(self) -> None:
        _clocks.pop(self.ident, None)
        _logs.pop(self.ident, None)

    @initialize(
        maxsize=MAXSIZES,
        sized=st.booleans(),
        ttl=CACHE_TTLS,
        mode=st.sampled_from(["observe", "raise", "bare"]),
    )
    def build(self, maxsize: float, sized: bool, ttl: float | None, mode: str) -> None:
        # observe: a listener and stats, checked exactly; raise: the same, with a
        # listener that raises for BOOM_KEY; bare: no extras at all (the leanest
        # code paths), checked on what is visible.
        if self.needs_ttl and ttl is None:
            ttl = 1.5
        self.maxsize = maxsize
        self.sized = sized
        self.ttl = ttl
        self.mode = mode
        self.cache = self.make(
            maxsize,
            getsizeof=value_size if sized else None,
            ttl=ttl,
            timer=SharedClock(self.ident),
            on_evict=None if mode == "bare" else Recorder(self.ident, self.boom_key),
            extra={} if mode == "bare" else stats_kwargs(self.cache_class),
        )

    def make(self, maxsize: float, *, extra: dict[str, Any], **kwargs: Any) -> Cache[Any, Any]:
        # maxsize positional, everything else by keyword, as most users write it.
        return self.cache_class(maxsize, **kwargs, **extra)

    @property
    def boom_key(self) -> int | None:
        return BOOM_KEY if self.mode == "raise" else None

    # -- the model ------------------------------------------------------------

    def stamp(self) -> int:
        self.tick += 1
        return self.tick

    def new_value(self, size: int) -> Value:
        self.uid += 1
        return (size, self.uid)

    def live(self) -> dict[int, Entry]:
        now = self.clock()
        return {key: e for key, e in self.entries.items() if e.deadline > now}

    def live_size(self) -> int:
        return sum(e.size for e in self.live().values())

    def rank(self, entry: Entry) -> tuple[int, ...]:
        if self.policy == "lfu":
            return (entry.count, entry.stamp)
        return (entry.stamp,)

    def eviction_order(self) -> list[int]:
        live = self.live()
        return sorted(live, key=lambda key: self.rank(live[key]))

    def iteration_order(self) -> list[int]:
        """Eviction order, but TTLCache iterates as cachetools: the keys with the
        cache's ttl in write order first, then the others least recently used first."""
        order = self.eviction_order()
        if self.cache_class is not TTLCache:
            return order
        live = self.live()
        timed = sorted((k for k in order if live[k].default_ttl), key=lambda k: live[k].written)
        return timed + [k for k in order if not live[k].default_ttl]

    def victim(self) -> int:
        return self.eviction_order()[0]

    def read(self, entry: Entry) -> None:
        if self.policy == "lru":
            entry.stamp = self.stamp()
        elif self.policy == "lfu":
            entry.count += 1
            entry.stamp = self.stamp()

    def overwritten(self, entry: Entry) -> None:
        if self.policy == "lfu":
            entry.count += 1
        entry.stamp = self.stamp()

    def owe(self, key: int) -> None:
        """``key`` is expired and must be gone (and reported) by the end of the step."""
        self.owed.append((key, self.entries.pop(key).value))

    def owe_all_expired(self, at: float | None = None) -> None:
        at = self.clock() if at is None else at
        for key in [key for key, e in self.entries.items() if e.deadline <= at]:
            self.owe(key)

    def evict(self) -> tuple[int, Value]:
        key = self.victim()
        self.evictions += 1
        return key, self.entries.pop(key).value

    def model_lookup(self, key: int) -> Entry | None:
        """A counted lookup (``cache[key]``, ``get``): a hit and a use, or a miss."""
        entry = self.live().get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
            self.read(entry)
        return entry

    def model_validate(self, values: Iterable[Value]) -> type[Exception] | None:
        """The error that storing these values is refused with, or ``None``."""
        for value in values:
            if self.sized:
                size = value_size(value)
                if size > self.maxsize:
                    return ItemTooLarge
                if size < 0:
                    return ValueError
            elif self.maxsize < 1:
                return ItemTooLarge
        return None

    def model_write(
        self, key: int, value: Value, ttl: float | None
    ) -> tuple[type[Exception] | None, list[tuple[int, Value]]]:
        """Store ``key``; return the error expected and the items evicted, in order."""
        size = value_size(value) if self.sized else 1
        error = self.model_validate([value])
        if error is not None:
            return error, []
        now = self.clock()
        lifetime = self.ttl if ttl is None else ttl
        deadline = INF if lifetime is None else now + lifetime
        evicted: list[tuple[int, Value]] = []
        if key in self.entries and self.entries[key].deadline <= now:
            self.owe(key)  # an expired key is absent: this is a fresh insert
        if not self.exact_victims:
            # The victims are learnt from the cache afterwards (see ``learn_victims``).
            if key in self.entries:
                self.replaced.append((key, self.entries[key].value))
            if self.live_size() - (self.entries[key].size if key in self.entries else 0) + size > (
                self.maxsize
            ):
                self.owe_all_expired()
            stamp = self.stamp()
            default_ttl = ttl is None and self.ttl is not None
            self.entries[key] = Entry(value, size, deadline, 1, stamp, stamp, default_ttl)
            return None, []
        if key in self.entries:
            entry = self.entries[key]
            if self.live_size() - entry.size + size > self.maxsize:
                # Room is needed: every expired item goes before any live one.
                self.owe_all_expired()
                while key in self.entries and self.live_size() - entry.size + size > self.maxsize:
                    evicted.append(self.evict())
            if key in self.entries:
                entry.value, entry.size, entry.deadline = value, size, deadline
                self.overwritten(entry)
                entry.written = self.stamp()
                entry.default_ttl = ttl is None and self.ttl is not None
                return None, evicted
        if self.live() and self.live_size() + size > self.maxsize:
            self.owe_all_expired()
            while self.entries and self.live_size() + size > self.maxsize:
                evicted.append(self.evict())
        stamp = self.stamp()
        default_ttl = ttl is None and self.ttl is not None
        self.entries[key] = Entry(value, size, deadline, 1, stamp, stamp, default_ttl)
        return None, evicted

    def settle(self, result: Any = None, evicted: list[tuple[int, Value]] | None = None) -> None:
        """Account for the listener calls of the last step and check them."""
        raised = result is BOOMED
        if not self.exact_victims:
            self.learn_victims()
        if self.mode == "bare":
            assert not raised
            self.owed.clear()
            return
        new = self.log[self.seen :]
        self.seen = len(self.log)
        now = self.clock()
        owed = self.owed
        size_events = []
        for key, value, cause in new:
            if cause == "size":
                size_events.append((key, value))
                continue
            if cause == "learnt":
                continue
            assert cause == "expired", f"unknown cause {cause!r}"
            assert not size_events, f"{key!r} expired after a live item was evicted: {new}"
            if (key, value) in owed:
                owed.remove((key, value))
            else:
                entry = self.entries.get(key)
                assert entry is not None, f"{key!r} reported expired but not stored: {new}"
                assert entry.value == value, f"{key!r} reported with a stale value: {new}"
                assert entry.deadline <= now, f"{key!r} reported expired while live: {new}"
                del self.entries[key]
            self.expirations += 1
        assert size_events == (evicted or []), f"evictions {size_events} != model {evicted}"
        assert not owed, f"expired items {owed} should have been removed and reported"
        if self.mode == "raise":
            expected_raise = any(key == BOOM_KEY for key, _, _ in new)
            assert raised == expected_raise, f"listener error raised={raised}, calls={new}"
        else:
            assert not raised

    def learn_victims(self) -> None:
        """Loose model: drop the live items the cache evicted, after checking each.

        With a listener, every ``"size"`` event must name a live item with its
        value (or a value just written over); without one, a live item missing
        from the cache was evicted. Either way the cache holds every other item.
        """
        replaced, self.replaced = self.replaced, []
        if self.mode == "bare":
            for key in list(self.live()):
                if self.cache.peek(key, MISSING) is MISSING:
                    del self.entries[key]
            return
        new = self.log[self.seen :]
        for index, (key, value, cause) in enumerate(new):
            if cause != "size":
                continue
            entry = self.entries.get(key)
            if entry is not None and entry.value == value and entry.deadline > self.clock():
                del self.entries[key]
            else:
                assert (key, value) in replaced, f"evicted {key!r}={value!r}: not a live item"
                replaced.remove((key, value))
            self.evictions += 1
            self.log[self.seen + index] = (key, value, "learnt")
        assert self.live_size() <= self.maxsize or not self.live()

    def expect(self, result: Any, error: type[Exception] | None, value: Any = None) -> None:
        """``result`` is ``value`` when no error is expected, else an ``error``.

        A listener's error replaces either (``settle`` checks it was due).
        """
        if result is BOOMED:
            return
        if error is None:
            assert result == value, f"{result!r} != {value!r}"
        else:
            assert isinstance(result, error), f"expected {error.__name__}, got {result!r}"

    # -- writes -----------------------------------------------------------------

    def do_write(self, key: int, size: int, how: str, ttl: float | None = None) -> None:
        value = self.new_value(size)
        if how == "setitem":
            result = attempt(self.cache.__setitem__, key, value)
        elif how == "set":
            result = attempt(self.cache.set, key, value)
        else:
            result = attempt(self.cache.set, key, value, ttl=ttl)
        error, evicted = self.model_write(key, value, ttl)
        self.expect(result, error)
        self.settle(result, evicted)

    # Three rules for writes, so that about a third of the steps write.
    @rule(key=KEYS, size=SIZES)
    def setitem(self, key: int, size: int) -> None:
        self.do_write(key, size, "setitem")

    @rule(key=KEYS, size=SIZES)
    def set_default_ttl(self, key: int, size: int) -> None:
        self.do_write(key, size, "set")

    @rule(key=KEYS, size=SIZES, ttl=ITEM_TTLS)
    def set_own_ttl(self, key: int, size: int, ttl: float) -> None:
        self.do_write(key, size, "set ttl", ttl)

    @precondition(lambda self: self.mode != "raise")
    @rule(
        items=st.dictionaries(KEYS, SIZES, max_size=3),
        ttl=st.none() | ITEM_TTLS,
    )
    def set_many(self, items: dict[int, int], ttl: float | None) -> None:
        values = {key: self.new_value(size) for key, size in items.items()}
        result = attempt(self.cache.set_many, values, ttl=ttl)
        error = self.model_validate(values.values())
        evicted: list[tuple[int, Value]] = []
        if error is None:  # every item is checked first; a bad one stores nothing
            for key, value in values.items():
                error, more = self.model_write(key, value, ttl)
                assert error is None
                evicted += more
        self.expect(result, error)
        self.settle(result, evicted)

    @precondition(lambda self: self.mode != "raise")
    @rule(key=KEYS, size=SIZES)
    def setdefault(self, key: int, size: int) -> None:
        default = self.new_value(size)
        result = attempt(self.cache.setdefault, key, default)
        entry = self.model_lookup(key)
        evicted: list[tuple[int, Value]] = []
        if entry is not None:
            self.expect(result, None, entry.value)
        else:
            error, evicted = self.model_write(key, default, None)
            self.expect(result, error, default)
        self.settle(result, evicted)

    @rule(
        key=st.sampled_from([[], {}, set()]) | KEYS,
        ttl=st.sampled_from([0, 0.0, -1, -0.5, math.nan, -INF]),
    )
    def write_rejected(self, key: Any, ttl: float) -> None:
        """Refused writes change nothing (the invariant compares with the model)."""
        if isinstance(key, int):
            with pytest.raises(ConfigurationError):
                self.cache.set(key, self.new_value(1), ttl=ttl)
        else:
            with pytest.raises(TypeError):
                self.cache[key] = self.new_value(1)
            with pytest.raises(TypeError):
                self.cache.set(key, self.new_value(1), ttl=1.0)
        self.settle()

    # -- reads ------------------------------------------------------------------

    @rule(key=KEYS)
    def getitem(self, key: int) -> None:
        result = attempt(self.cache.__getitem__, key)
        entry = self.model_lookup(key)
        if entry is None:
            self.expect(result, KeyError)
        else:
            self.expect(result, None, entry.value)
        self.settle(result)

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        result = attempt(self.cache.get, key, MISSING)
        entry = self.model_lookup(key)
        self.expect(result, None, MISSING if entry is None else entry.value)
        self.settle(result)

    @precondition(lambda self: self.mode != "raise")
    @rule(keys=st.lists(KEYS, max_size=4))
    def get_many(self, keys: list[int]) -> None:
        result = attempt(self.cache.get_many, keys)
        expected = {}
        for key in keys:
            entry = self.model_lookup(key)
            if entry is not None:
                expected[key] = entry.value
        self.expect(result, None, expected)
        self.settle(result)

    @precondition(lambda self: self.policy == "lfu")
    @rule(key=KEYS)
    def use_count(self, key: int) -> None:
        # use_count() is itself no use: checked by the invariant after the step.
        entry = self.live().get(key)
        result = attempt(self.cache.use_count, key)  # type: ignore[attr-defined]
        if entry is None:
            self.expect(result, KeyError)
        else:
            self.expect(result, None, entry.count)
        self.settle(result)

    # -- removals ---------------------------------------------------------------

    @rule(key=KEYS, how=st.sampled_from(["del", "delete", "pop", "pop_default"]))
    def remove(self, key: int, how: str) -> None:
        entry = self.live().get(key)
        if how == "del":
            result = attempt(self.cache.__delitem__, key)
            error, value = (KeyError, None) if entry is None else (None, None)
        elif how == "delete":
            result = attempt(self.cache.delete, key)
            error, value = None, entry is not None
        elif how == "pop":
            result = attempt(self.cache.pop, key)
            error, value = (KeyError, None) if entry is None else (None, entry.value)
        else:
            result = attempt(self.cache.pop, key, MISSING)
            error, value = None, MISSING if entry is None else entry.value
        self.expect(result, error, value)
        if entry is not None:
            del self.entries[key]
        self.settle(result)

    @precondition(lambda self: self.mode != "raise")
    @rule()
    def popitem(self) -> None:
        result = attempt(self.cache.popitem)
        if not self.live():
            self.expect(result, KeyError)
        elif not self.exact_victims:
            assert isinstance(result, tuple), result
            key, value = result
            assert key in self.live(), result
            assert self.entries.pop(key).value == value, result
        else:
            key = self.victim()
            self.expect(result, None, (key, self.entries.pop(key).value))
        self.settle(result)

    @rule(delta=st.none() | st.sampled_from([0.0, 0.5, 1.0]))
    def expire(self, delta: float | None) -> None:
        now = self.clock()
        at = now if delta is None else now + delta
        result = attempt(self.cache.expire) if delta is None else attempt(self.cache.expire, at)
        doomed = [(key, e.value) for key, e in self.entries.items() if e.deadline <= at]
        if self.mode == "bare":
            # Expired items may already be gone silently; live ones due by `at` may not.
            must = [(key, e.value) for key, e in self.live().items() if e.deadline <= at]
            assert set(must) <= set(result) <= set(doomed), (result, doomed)
            for key, _ in doomed:
                del self.entries[key]
        else:
            self.owe_all_expired(at)
            if result is not BOOMED:
                assert sorted(result) == sorted(doomed)
        self.settle(result)

    # -- whole-cache views ------------------------------------------------------

    @rule(view=st.sampled_from(["len", "iter", "keys", "items", "values", "currsize"]))
    def check_view(self, view: str) -> None:
        """Iteration is in eviction order for LRU and FIFO (LFU: in no particular order;
        TTLCache: see ``iteration_order``)."""
        live = self.live()
        order = self.iteration_order()
        if view == "len":
            result = attempt(len, self.cache)
            expected: Any = len(live)
        elif view == "currsize":
            result = attempt(lambda: self.cache.currsize)
            expected = self.live_size()
        elif view in ("iter", "keys"):
            result = attempt(lambda: list(self.cache if view == "iter" else self.cache.keys()))
            expected = order
        elif view == "items":
            result = attempt(lambda: list(self.cache.items()))
            expected = [(key, live[key].value) for key in order]
        else:
            result = attempt(lambda: list(self.cache.values()))
            expected = [live[key].value for key in order]
        if self.policy in ("lfu", "tinylfu") and isinstance(result, list):
            result, expected = sorted(result), sorted(expected)
        self.expect(result, None, expected)
        self.settle(result)
        assert self.cache.maxsize == self.maxsize

    # -- time, stats, copies ------------------------------------------------------

    @rule(step=st.sampled_from([0.25, 0.5, 1.0, 2.0, "deadline"]))
    def advance(self, step: float | str) -> None:
        if isinstance(step, float):
            self.clock.advance(step)
            return
        now = self.clock()
        deadlines = [e.deadline for e in self.entries.values() if now < e.deadline < INF]
        if deadlines:
            self.clock.set(min(deadlines))  # exactly on it: that item is expired now

    @rule(what=st.sampled_from(["copy.copy", "copy()", "pickle", "reset_stats", "clear"]))
    def housekeeping(self, what: str) -> None:
        if what == "reset_stats":
            self.cache.reset_stats()
            self.hits = self.misses = self.evictions = self.expirations = 0
        elif what == "clear":
            self.cache.clear()  # calls no listener, counts nothing
            self.entries.clear()
            self.settle()
            assert len(self.cache) == 0
        else:
            original = self.cache
            if what == "copy.copy":
                clone = copy.copy(original)
            elif what == "copy()":
                clone = original.copy()
            else:
                clone = pickle.loads(pickle.dumps(original))
            assert type(clone) is type(original)
            # The clone goes on in the original's place; emptying the original must
            # not touch it (the invariant checks the clone against the model).
            original.clear()
            self.cache = clone

    # -- checked after every step -----------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.cache._check()

    @invariant()
    def agrees_with_model(self) -> None:
        cache = self.cache
        now = self.clock()
        for key in range(N_KEYS):
            entry = self.entries.get(key)
            if entry is not None and entry.deadline > now:
                assert key in cache
                assert cache.peek(key, MISSING) == entry.value
                expected_ttl = None if entry.deadline == INF else entry.deadline - now
                assert cache.ttl_of(key) == expected_ttl
                if self.policy == "lfu":
                    assert cache.use_count(key) == entry.count  # type: ignore[attr-defined]
            else:
                assert key not in cache
                assert cache.peek(key, MISSING) is MISSING
                with pytest.raises(KeyError):
                    cache.ttl_of(key)
        self.settle()  # none of these counts, but may drop expired items
        if self.mode != "bare":
            stats = cache.stats()
            counts = (stats.hits, stats.misses, stats.evictions, stats.expirations)
            assert counts == (self.hits, self.misses, self.evictions, self.expirations)
            lookups = self.hits + self.misses
            assert stats.hit_ratio == (self.hits / lookups if lookups else 0.0)


class LRUMachine(CacheMachine):
    policy = "lru"
    cache_class = LRUCache


class LFUMachine(CacheMachine):
    policy = "lfu"
    cache_class = LFUCache


class FIFOMachine(CacheMachine):
    policy = "fifo"
    cache_class = FIFOCache


class TTLMachine(CacheMachine):
    """TTLCache: an LRU cache whose constructor takes the ttl second, positionally."""

    policy = "lru"
    cache_class = TTLCache
    needs_ttl = True

    def make(self, maxsize: float, *, extra: dict[str, Any], **kwargs: Any) -> Cache[Any, Any]:
        return TTLCache(
            maxsize,
            kwargs["ttl"],
            kwargs["timer"],
            kwargs["getsizeof"],
            on_evict=kwargs["on_evict"],
            **extra,
        )


class TinyLFUMachine(CacheMachine):
    """TinyLFUCache: every rule of the model, with the victims learnt from the cache."""

    policy = "tinylfu"
    cache_class = TinyLFUCache
    exact_victims = False


class ThreadSafeMachine(CacheMachine):
    """ThreadSafeCache around an LRUCache: the wrapper must change nothing."""

    policy = "lru"
    cache_class = LRUCache

    def make(self, maxsize: float, *, extra: dict[str, Any], **kwargs: Any) -> Any:
        return ThreadSafeCache(LRUCache(maxsize, **kwargs, **extra))


# the profile's examples (200 in CI) of 50 steps each: the suite's slowest tests, kept
# inside CI's time budget
MACHINE_SETTINGS = settings(
    max_examples=settings().max_examples,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    deadline=None,
)

TestLRUCache = LRUMachine.TestCase
TestLRUCache.settings = MACHINE_SETTINGS
TestLFUCache = LFUMachine.TestCase
TestLFUCache.settings = MACHINE_SETTINGS
TestFIFOCache = FIFOMachine.TestCase
TestFIFOCache.settings = MACHINE_SETTINGS
TestTTLCache = TTLMachine.TestCase
TestTTLCache.settings = MACHINE_SETTINGS
# Half the examples: TinyLFU's model is looser, and the wrapper adds only a lock.
LIGHTER_SETTINGS = settings(MACHINE_SETTINGS, max_examples=settings().max_examples // 2)
TestTinyLFUCache = TinyLFUMachine.TestCase
TestTinyLFUCache.settings = LIGHTER_SETTINGS
TestThreadSafeCache = ThreadSafeMachine.TestCase
TestThreadSafeCache.settings = LIGHTER_SETTINGS

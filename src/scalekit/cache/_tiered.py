"""A near cache in front of a shared tier: :class:`TieredCache`."""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from scalekit._validate import check_callable, check_hashable, check_seconds, type_name
from scalekit.errors import ArgumentTypeError, ConfigurationError

__all__ = ["TieredCache", "TieredStats"]

V = TypeVar("V")
_MISSING: Any = object()
_UNKNOWN: Any = object()
_FOREVER = math.inf  # the deadline of an l1 entry with none; compared by identity
_TOUCHED = 1024  # l1 hits remembered for l1's recency until the next locked call


def _tally(counter: itertools.count[int]) -> int:
    """How many times ``next(counter)`` was called (``count(n)`` reprs as ``count(n)``)."""
    return int(repr(counter)[6:-1])


@dataclass(frozen=True)
class TieredStats:
    """Counters of a :class:`TieredCache`: reads answered by l1, by l2, by neither;
    l1 entries dropped by invalidations; whole-l1 flushes; values read from l2
    that were not kept in l1 because an invalidation (or a drop of the
    invalidation connection) came while they were read."""

    l1_hits: int
    l2_hits: int
    misses: int
    invalidated: int
    flushes: int
    not_kept: int

    @property
    def hit_ratio(self) -> float:
        """``(l1_hits + l2_hits) / reads``, or 0.0 before the first read."""
        reads = self.l1_hits + self.l2_hits + self.misses
        return (self.l1_hits + self.l2_hits) / reads if reads else 0.0


class _Flight:
    """A read of l2 (or a write to it) whose result may go into l1."""

    __slots__ = ("generation", "stale")

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.stale = False


class TieredCache(Generic[V]):
    """A near cache (``l1``: an in-process cache) in front of a shared tier (``l2``:
    any :class:`~scalekit.protocols.Store`, such as a :class:`RedisCache` or a
    :class:`~scalekit.sharding.ShardedStore`).

    Reads try l1, then l2 (keeping what they found in l1); writes go to l2, then
    to l1. With ``invalidation`` (a :class:`RedisInvalidation`, or several for a
    sharded l2; a :class:`SQLiteInvalidation` over a :class:`SQLiteCache`), every
    app server's l1 drops a key as soon as any server changes it in l2 (with
    :class:`SQLiteInvalidation`: at its next poll). What bites users of near
    caches is handled:

    - l1 is flushed whenever the invalidation connection drops or comes back
      (messages may have been missed), and keeps nothing while it is down;
    - an l1 entry never outlives the l2 entry: it lives ``min(l1_ttl, l2's
      remaining TTL)`` (``l1_ttl``: at most this long without any message);
    - a value read from l2 while an invalidation of its key arrives is handed to
      its caller but not kept in l1 (each read is a *flight* that an invalidation
      marks stale).

    Without ``invalidation``, l1 entries are only as fresh as ``l1_ttl`` allows.

    ``l1`` must take ``set(key, value, ttl=...)`` (every scalekit cache does);
    this object guards it with a lock of its own, and an l1 hit takes no lock: it
    reads an index of what l1 holds (value and deadline), kept by the locked
    calls, and the keys it read are replayed into l1's recency at the next locked
    call (as Caffeine's read buffer does). ``timer`` is the clock of the
    deadlines: give l1 the same one.

    Runtime complexity: an l1 hit is O(1) with no I/O and no lock; a miss is one
    round trip to l2 (two when l2 cannot read a value and its TTL together).
    """

    def __init__(
        self,
        l1: Any,
        l2: Any,
        *,
        invalidation: Any = None,
        l1_ttl: float | timedelta | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, tier in (("l1", l1), ("l2", l2)):
            for method in ("get", "set", "delete"):
                if not callable(getattr(tier, method, None)):
                    raise ArgumentTypeError(
                        f"{name} must be a cache or Store with {method}(), got {type_name(tier)}"
                    )
        channels = (
            []
            if invalidation is None
            else (list(invalidation) if isinstance(invalidation, (list, tuple)) else [invalidation])
        )
        for channel in channels:
            if not callable(getattr(channel, "attach", None)):
                raise ArgumentTypeError(
                    "invalidation must be an invalidation channel with attach() (a "
                    f"RedisInvalidation or SQLiteInvalidation), got {type_name(channel)}"
                )
            _check_prefix(l2, channel)
        self._l1_ttl = None if l1_ttl is None else check_seconds(l1_ttl, "l1_ttl")
        check_callable(timer, "timer")
        self.l1 = l1
        self.l2 = l2
        self._channels = channels
        self._lock = threading.Lock()
        self._flights: dict[Any, list[_Flight]] = {}
        self._timer = timer
        # key -> (value, deadline) of what l1 holds: read without the lock
        self._index: dict[Any, tuple[Any, float]] = {}
        self._touched: deque[Any] = deque(maxlen=_TOUCHED)
        self._l1_hits = itertools.count()
        self._l2_hits = self._misses = 0
        self._invalidated = self._flushes = self._not_kept = 0
        self._read_ttl = callable(getattr(l2, "get_with_ttl", None))
        self._read_ttls = callable(getattr(l2, "get_many_with_ttl", None))
        own = getattr(l1, "ttl", None)
        own = own if isinstance(own, (int, float)) and not isinstance(own, bool) else None
        bounds = [b for b in (self._l1_ttl, own) if b is not None]
        self._l1_bound: float | None = min(bounds) if bounds else None
        self._closed = False
        for channel in channels:
            channel.attach(self._on_keys, self._on_flush)

    # -- invalidation ------------------------------------------------------------

    def _generation(self) -> int:
        return sum(channel.generation for channel in self._channels)

    def _listening(self) -> bool:
        return all(channel.ready for channel in self._channels)

    # -- l1 and its index, under the lock ------------------------------------------

    def _drop(self, key: Any) -> bool:
        """Drop ``key`` from l1 and the index; whether l1 held it."""
        self._index.pop(key, None)
        return self.l1.pop(key, _MISSING) is not _MISSING

    def _keep(self, key: Any, value: Any, ttl: float | None) -> None:
        if ttl is None:
            self.l1.set(key, value)
            deadline = _FOREVER
        else:
            self.l1.set(key, value, ttl=ttl)
            deadline = self._timer() + ttl
        index = self._index
        index[key] = (value, deadline)
        if len(index) > 2 * len(self.l1) + 64:  # l1 evicted or expired on its own
            l1 = self.l1
            self._index = {k: entry for k, entry in index.items() if k in l1}

    def _replay(self) -> None:
        """Tell l1 which keys were read since the last locked call (its recency)."""
        touched, index, l1 = self._touched, self._index, self.l1
        for _ in range(len(touched)):
            key = touched.popleft()
            if key in index and l1.get(key, _MISSING) is _MISSING:
                del index[key]  # l1 let it go (expired): so does the index

    def _on_keys(self, keys: list[str]) -> None:
        with self._lock:
            for key in keys:
                if self._drop(key):
                    self._invalidated += 1
                for flight in self._flights.get(key, ()):
                    flight.stale = True

    def _on_flush(self) -> None:
        with self._lock:
            self.l1.clear()
            self._index = {}
            self._flushes += 1
            for flights in self._flights.values():
                for flight in flights:
                    flight.stale = True

    def _take_off(self, key: Any) -> _Flight:
        flight = _Flight(self._generation())
        self._flights.setdefault(key, []).append(flight)
        return flight

    def _land(self, key: Any, flight: _Flight, value: Any, ttl: float | None) -> None:
        """Keep ``value`` in l1 unless the flight went stale; called under the lock."""
        flights = self._flights[key]
        flights.remove(flight)
        if not flights:
            del self._flights[key]
        if value is _MISSING:
            return
        if (
            flight.stale
            or self._closed
            or (
                self._channels
                and (flight.generation != self._generation() or not self._listening())
            )
        ):
            self._not_kept += 1
            return
        if ttl is not None and ttl <= 0:
            return
        bound = self._l1_bound
        if bound is not None:
            ttl = bound if ttl is None else min(ttl, bound)
        self._keep(key, value, ttl)

    def _forget(self, key: Any, flight: _Flight) -> None:
        with self._lock:
            self._land(key, flight, _MISSING, None)

    # -- reading -------------------------------------------------------------------

    def _read_l2(self, key: Any) -> tuple[Any, float | None]:
        if self._read_ttl:
            return self.l2.get_with_ttl(key, _MISSING)  # type: ignore[no-any-return]
        value = self.l2.get(key, _MISSING)
        if value is _MISSING:
            return value, None
        try:
            return value, self.l2.ttl_of(key)
        except KeyError:
            return _MISSING, None  # it expired between the two calls

    def get(self, key: Any, default: Any = None, /) -> Any:
        """The value of ``key`` from l1, else from l2 (kept in l1), else ``default``.

        Runtime complexity: O(1) on an l1 hit; one or two round trips otherwise.
        """
        try:
            entry = self._index.get(key)
        except TypeError:
            check_hashable(key, "key")  # raises, naming the key
            raise
        if entry is not None:
            deadline = entry[1]
            if deadline is _FOREVER or deadline > self._timer():
                next(self._l1_hits)
                self._touched.append(key)
                return entry[0]
        with self._lock:
            self._replay()
            value = self.l1.get(key, _MISSING)
            if value is not _MISSING:
                next(self._l1_hits)
                return value
            self._index.pop(key, None)
            flight = self._take_off(key)
        try:
            value, ttl = self._read_l2(key)
        except BaseException:
            self._forget(key, flight)
            raise
        with self._lock:
            if value is _MISSING:
                self._misses += 1
            else:
                self._l2_hits += 1
            self._land(key, flight, value, ttl)
        return default if value is _MISSING else value

    def get_many(self, keys: Iterable[Any], /) -> dict[Any, Any]:
        """The present keys with their values: l1 first, the rest in one l2 batch.

        What l2 returns is kept in l1 when l2 reads TTLs in a batch
        (``get_many_with_ttl``: :class:`RedisCache`, :class:`~scalekit.sharding.ShardedStore`
        over them); otherwise it is only returned.
        """
        if not isinstance(keys, Iterable) or isinstance(keys, (str, bytes)):
            raise ArgumentTypeError(f"keys must be an iterable of keys, got {type_name(keys)}")
        keys = [check_hashable(key, "a key") for key in keys]
        found: dict[Any, Any] = {}
        flights: dict[Any, _Flight] = {}
        l1_hits = 0  # counted once l2 has taken the rest: a refused call counts nothing
        with self._lock:
            self._replay()
            for key in keys:
                value = self.l1.get(key, _MISSING)
                if value is not _MISSING:
                    l1_hits += 1
                    found[key] = value
                elif key not in flights:
                    flights[key] = self._take_off(key)
            if not flights:
                for _ in range(l1_hits):
                    next(self._l1_hits)
                return found
        try:
            if self._read_ttls:
                fetched = self.l2.get_many_with_ttl(list(flights))
            else:
                fetched = {
                    key: (value, _UNKNOWN) for key, value in self.l2.get_many(list(flights)).items()
                }
        except BaseException:
            with self._lock:
                for key, flight in flights.items():
                    self._land(key, flight, _MISSING, None)
            raise
        with self._lock:
            for _ in range(l1_hits):
                next(self._l1_hits)
            for key, flight in flights.items():
                value, ttl = fetched.get(key, (_MISSING, None))
                if value is _MISSING:
                    self._misses += 1
                else:
                    self._l2_hits += 1
                    found[key] = value
                if ttl is _UNKNOWN:  # l2 cannot tell its TTLs in a batch: l1 keeps nothing
                    self._land(key, flight, _MISSING, None)
                else:
                    self._land(key, flight, value, ttl)
        return found

    def ttl_of(self, key: Any, /) -> float | None:
        """Seconds ``key`` has left in l2 (the tier that decides)."""
        return self.l2.ttl_of(key)  # type: ignore[no-any-return]

    # -- writing -------------------------------------------------------------------

    def _check_items(self, items: Mapping[Any, Any]) -> None:
        """Refuse a bad key or value before l1 is touched, as l2 would (no I/O)."""
        for key in items:
            check_hashable(key, "key")
        check = getattr(self.l2, "check_items", None)
        if check is not None:
            check(items)

    def _write(
        self,
        key: Any,
        value: Any,
        ttl: float | None,
        *,
        add: bool,
        guard: tuple[Any, Any] | None = None,
    ) -> bool:
        self._check_items({check_hashable(key, "key"): value})
        with self._lock:
            self._replay()
            self._drop(key)
            flight = self._take_off(key)
        try:
            kwargs = {} if ttl is None else {"ttl": ttl}
            if guard is not None:
                stored = bool(
                    self.l2.set_if(key, value, guard=guard[0], expected=guard[1], **kwargs)
                )
            elif add:
                stored = bool(self.l2.add(key, value, **kwargs))
            else:
                self.l2.set(key, value, **kwargs)
                stored = True
        except BaseException:
            self._forget(key, flight)
            raise
        try:
            for channel in self._channels:
                channel.publish([key])
        except BaseException:
            self._forget(key, flight)  # the others may keep the old value: so does nothing here
            raise
        with self._lock:
            if stored:
                l2_ttl = self._l2_ttl(ttl)
                self._land(key, flight, value, l2_ttl)
            else:
                self._land(key, flight, _MISSING, None)
        return stored

    def _l2_ttl(self, ttl: float | None) -> float | None:
        if ttl is not None:
            return None if ttl == math.inf else ttl
        default = getattr(self.l2, "ttl", None)
        return default if isinstance(default, (int, float)) else None

    def set(self, key: Any, value: Any, /, *, ttl: float | timedelta | None = None) -> None:
        """Write ``value`` to l2, then keep it in l1; other servers' l1 drop ``key``."""
        seconds = None if ttl is None else check_seconds(ttl, "ttl", allow_inf=True)
        self._write(key, value, seconds, add=False)

    def add(self, key: Any, value: Any, /, *, ttl: float | timedelta | None = None) -> bool:
        """Write ``value`` to l2 only if ``key`` is absent there; whether it did."""
        seconds = None if ttl is None else check_seconds(ttl, "ttl", allow_inf=True)
        return self._write(key, value, seconds, add=True)

    @property
    def atomic_set_if(self) -> bool:
        """Whether :meth:`set_if` is atomic: it is l2's."""
        return bool(getattr(self.l2, "atomic_set_if", False))

    def set_if(
        self,
        key: Any,
        value: Any,
        /,
        *,
        guard: Any,
        expected: Any,
        ttl: float | timedelta | None = None,
    ) -> bool:
        """Write ``value`` to l2 only if l2's ``guard`` holds ``expected`` (l2's
        ``set_if``), then keep it in l1; whether it did. Other servers' l1 drop
        ``key`` when it was written."""
        if not callable(getattr(self.l2, "set_if", None)):
            raise ConfigurationError(f"l2 ({type_name(self.l2)}) has no set_if")
        seconds = None if ttl is None else check_seconds(ttl, "ttl", allow_inf=True)
        return self._write(key, value, seconds, add=False, guard=(guard, expected))

    def set_many(
        self, items: Mapping[Any, Any], /, *, ttl: float | timedelta | None = None
    ) -> None:
        """Write every item to l2 in one batch; drop them from l1 (they are read back
        on the next miss)."""
        if not isinstance(items, Mapping):
            raise ArgumentTypeError(f"items must be a mapping, got {type_name(items)}")
        seconds = None if ttl is None else check_seconds(ttl, "ttl", allow_inf=True)
        self._check_items(items)
        with self._lock:
            self._replay()
            for key in items:
                self._drop(key)
        try:
            self.l2.set_many(items, **({} if seconds is None else {"ttl": seconds}))
        finally:  # a failed batch may have written some items: reads in flight keep none
            self._dropped(items)
        for channel in self._channels:
            channel.publish(list(items))

    def delete(self, key: Any, /) -> bool:
        """Delete ``key`` from l2 and l1; whether l2 had it."""
        check_hashable(key, "key")
        with self._lock:
            self._drop(key)
        try:
            deleted = bool(self.l2.delete(key))
        finally:  # a failed delete may have deleted: a read in flight keeps nothing
            self._dropped([key])
        for channel in self._channels:
            channel.publish([key])
        return deleted

    def _dropped(self, keys: Iterable[Any]) -> None:
        """Drop ``keys`` from l1 and mark their reads in flight stale."""
        with self._lock:
            for key in keys:
                self._drop(key)
                for flight in self._flights.get(key, ()):
                    flight.stale = True

    def sync(self, timeout: float | timedelta = 1.0) -> bool:
        """Read-your-writes across app servers: once this returns, l1 holds nothing
        older than the changes any server finished before the call.

        An invalidation reaches the other servers a moment after the write (well
        under a millisecond on Redis, one poll interval on SQLite), so a request
        that follows its user's own write to another server can be faster. Call
        this first in such requests (a cookie set by the write can say which):
        each channel's ``sync`` is a barrier behind every message sent before it.
        If a channel cannot say in ``timeout`` seconds (or has no ``sync``), or
        there is no channel, l1 is flushed instead. Returns whether l1 was kept.

        Runtime complexity: one round trip per channel (O(l1) when flushing).
        """
        seconds = check_seconds(timeout, "timeout", allow_zero=True)
        if not self._channels:
            self._on_flush()
            return False
        for channel in self._channels:
            sync = getattr(channel, "sync", None)
            if sync is None or not sync(seconds):
                self._on_flush()
                return False
        return True

    def clear_l1(self) -> None:
        """Empty this process's l1 (l2 is untouched)."""
        self._on_flush()

    def stats(self) -> TieredStats:
        """A snapshot of the counters. Runtime complexity: O(1)."""
        with self._lock:
            return TieredStats(
                _tally(self._l1_hits),
                self._l2_hits,
                self._misses,
                self._invalidated,
                self._flushes,
                self._not_kept,
            )

    def _check(self) -> None:
        """Assert the invariants: the index holds l1's values (and at most as many
        others as the next rebuild allows), no flight is left without a caller."""
        with self._lock:
            index, l1 = self._index, self.l1
            assert len(index) <= 2 * len(l1) + 64 + 1, (len(index), len(l1))
            for key, (value, deadline) in index.items():
                held = l1.get(key, _MISSING) if key in l1 else _MISSING
                assert held is _MISSING or held == value, (key, held, value)
                assert deadline is _FOREVER or deadline == deadline  # a number, not NaN
            for key, flights in self._flights.items():
                assert flights, key
            check = getattr(l1, "_check", None)
            if check is not None:
                check()

    def close(self) -> None:
        """Stop receiving invalidations (the channels and tiers stay open). l1 is
        emptied and, having no news of other servers' writes, keeps nothing more:
        the cache then reads and writes l2 only."""
        for channel in self._channels:
            channel.detach(self._on_keys)
        with self._lock:
            self._closed = bool(self._channels)
        self._on_flush()


def _check_prefix(l2: Any, channel: Any) -> None:
    """Refuse a channel reporting keys under another prefix than l2's: none of
    its messages would name a key of l1 (silently stale)."""
    store_prefix, channel_prefix = getattr(l2, "prefix", None), getattr(channel, "prefix", None)
    if (
        isinstance(store_prefix, str)
        and isinstance(channel_prefix, str)
        and store_prefix != channel_prefix
    ):
        raise ConfigurationError(
            f"the invalidation reports keys under the prefix {channel_prefix!r} but l2's "
            f"prefix is {store_prefix!r}: no message would reach l1"
        )

"""Least recently used: evicts the item read or written longest ago."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from scalekit.cache._base import Cache, EvictionListener, K, V, builtin_popitem
from scalekit.protocols import Clock

__all__ = ["LRUCache"]


class LRUCache(Cache[K, V]):
    """A Least Recently Used cache: when full, the item used longest ago goes first.

    A read (``cache[key]``, ``get``) or a write counts as a use; ``in``,
    ``peek`` and iteration do not. A drop-in for :class:`cachetools.LRUCache`,
    with ``ttl=``, per-item TTLs, stats and an eviction listener on top.

    Runtime complexity: O(1) for every read and write, eviction included.

    >>> cache = LRUCache(maxsize=2)
    >>> cache["a"] = 1
    >>> cache["b"] = 2
    >>> cache["a"]
    1
    >>> cache["c"] = 3          # "b" is the least recently used
    >>> sorted(cache)
    ['a', 'c']
    """

    _data: OrderedDict[K, V]
    _ordered_data = True

    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[V], float] | None = None,
        *,
        ttl: float | timedelta | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
        stats: bool = False,
    ) -> None:
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict, stats=stats)
        self._data = OrderedDict()

    def __getitem__(self, key: K) -> V:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return self.__missing__(key)
        expires = self._expires
        if expires or self._own_expires:
            expires_at: float | None
            try:
                expires_at = expires[key]
            except KeyError:
                expires_at = self._own_expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                return self._expired_miss(key)
        self._data.move_to_end(key)
        self._hits += 1
        return value

    def get(self, key: K, default: Any = None) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return default
        expires = self._expires
        if expires or self._own_expires:
            expires_at: float | None
            try:
                expires_at = expires[key]
            except KeyError:
                expires_at = self._own_expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                self._expired_miss(key, call_missing=False)
                return default
        self._data.move_to_end(key)
        self._hits += 1
        return value

    def _policy_read(self, key: K) -> None:
        self._data.move_to_end(key)

    _policy_written = _policy_read

    def _policy_victim(self) -> K:
        return next(iter(self._data))

    @builtin_popitem
    def popitem(self) -> tuple[K, V]:
        """Remove and return the least recently used item (expired items first).

        Raises :class:`KeyError` when empty. Runtime complexity: O(1) amortized.
        """
        return super().popitem()


class _PlainLRUCache(LRUCache[K, V]):
    """The lean twin of :class:`LRUCache`: no sizes, TTLs, listener or stats to check."""

    _is_plain = True
    _general = LRUCache

    def __getitem__(self, key: K) -> V:
        try:
            value = self._data[key]
        except KeyError:
            return self.__missing__(key)
        self._data.move_to_end(key)
        return value

    def get(self, key: K, default: Any = None) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            return default
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
            return
        if len(data) >= self._maxlen:
            data.popitem(False)
        data[key] = value


class _LeanTimedLRU(LRUCache[K, V]):
    """Reads and writes of an LRU cache with a ``ttl`` and no sizes, listener or stats.

    Keys written with the cache's ``ttl`` take these paths; the rest (overwrites,
    per-item TTLs, purges) take the general ones.
    """

    # A hit is a lookup in _data, one clock read and a move: _next_expiry is at
    # most the earliest deadline in the cache, so while the clock is below it no
    # item has expired and the key's own deadline need not be looked up (the
    # floor of a TTL hit: an LRU hit plus a clock read).
    def __getitem__(self, key: K) -> V:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return self.__missing__(key)
        now = self._timer()
        if now < self._next_expiry:
            data.move_to_end(key)
            return value
        expires_at: float | None
        try:
            expires_at = self._expires[key]
        except KeyError:
            expires_at = self._own_expires.get(key)
            if expires_at is None:  # an item that never expires
                data.move_to_end(key)
                return value
        if expires_at <= now:
            return self._expired_miss(key)
        data.move_to_end(key)
        return value

    def get(self, key: K, default: Any = None) -> Any:
        data = self._data
        try:
            value = data[key]
        except KeyError:
            return default
        now = self._timer()
        if now < self._next_expiry:
            data.move_to_end(key)
            return value
        expires_at: float | None
        try:
            expires_at = self._expires[key]
        except KeyError:
            expires_at = self._own_expires.get(key)
            if expires_at is None:
                data.move_to_end(key)
                return value
        if expires_at <= now:
            self._expired_miss(key, call_missing=False)
            return default
        data.move_to_end(key)
        return value

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            self._store(key, value)
            return
        now = self._timer()
        if self._next_expiry <= now:
            self._store(key, value)  # the general path purges first
            return
        expires = self._expires
        queue = self._expiry_queue
        if len(data) >= self._maxlen:
            old_key = data.popitem(False)[0]
            old_deadline = expires.pop(old_key, None)
            if old_deadline is None:
                if self._own_expires:
                    self._forget_own_expiry(old_key)
            elif queue[1] is old_deadline:
                # The common case: the victim is the oldest write. With the entry
                # appended below, the queue keeps its length and live entries.
                queue.popleft()
                queue.popleft()
            else:
                self._unqueue(old_deadline)
        data[key] = value
        expires_at = now + self._ttl  # type: ignore[operator]
        if expires_at < self._queue_tail:
            self._add_expiry(key, expires_at, False)  # the clock went backwards
            if len(queue) > 4 * len(expires) + 128:
                self._compact_queue()  # no entry was appended: one fewer live key
            return
        expires[key] = expires_at
        queue.append(key)
        queue.append(expires_at)
        self._queue_tail = expires_at
        if expires_at < self._next_expiry:
            self._next_expiry = expires_at


class _PlainTimedLRUCache(_LeanTimedLRU[K, V]):
    """The lean twin of ``LRUCache(maxsize, ttl=...)``."""

    _general = LRUCache


LRUCache._lean_variants = {"untimed": _PlainLRUCache, "timed": _PlainTimedLRUCache}

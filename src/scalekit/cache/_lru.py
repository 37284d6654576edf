"""Least recently used: evicts the item read or written longest ago."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
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

    def __init__(
        self,
        maxsize: float,
        getsizeof: Callable[[V], float] | None = None,
        *,
        ttl: float | None = None,
        timer: Clock = time.monotonic,
        on_evict: EvictionListener | None = None,
    ) -> None:
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict)
        self._data = OrderedDict()

    def __getitem__(self, key: K) -> V:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return self.__missing__(key)
        expires = self._expires
        if expires:
            expires_at = expires.get(key)
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
        if expires:
            expires_at = expires.get(key)
            if expires_at is not None and expires_at <= self._timer():
                self._expired_miss(key, call_missing=False)
                return default
        self._data.move_to_end(key)
        self._hits += 1
        return value

    def __setitem__(self, key: K, value: V) -> None:
        if not self._plain or self._expires:
            self._store(key, value, self._ttl)
            return
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
        elif len(data) < self._maxlen:
            data[key] = value
        else:
            old_key, old_value = data.popitem(last=False)
            data[key] = value
            self._evictions += 1
            if self._on_evict is not None:
                self._notify([(old_key, old_value, "size")])

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

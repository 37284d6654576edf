"""First in, first out: evicts the item written longest ago."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from scalekit.cache._base import Cache, EvictionListener, K, V, builtin_popitem
from scalekit.protocols import Clock

__all__ = ["FIFOCache"]


class FIFOCache(Cache[K, V]):
    """A First In First Out cache: when full, the item written longest ago goes first.

    Reads do not change the order; overwriting a key counts as inserting it
    again. A drop-in for :class:`cachetools.FIFOCache`.

    Runtime complexity: O(1) for every read and write, eviction included.

    >>> cache = FIFOCache(maxsize=2)
    >>> cache["a"] = 1
    >>> cache["b"] = 2
    >>> cache["a"]               # reading does not save "a"
    1
    >>> cache["c"] = 3
    >>> sorted(cache)
    ['b', 'c']
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

    def _policy_written(self, key: K) -> None:
        self._data.move_to_end(key)

    def _policy_victim(self) -> K:
        return next(iter(self._data))

    @builtin_popitem
    def popitem(self) -> tuple[K, V]:
        """Remove and return the item written longest ago (expired items first).

        Raises :class:`KeyError` when empty. Runtime complexity: O(1) amortized.
        """
        return super().popitem()

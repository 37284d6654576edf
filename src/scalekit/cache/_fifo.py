"""First in, first out: evicts the item written longest ago."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
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
        if (self._expires or self._own_expires) and self._expired(key):
            return self._expired_miss(key)
        self._hits += 1
        return value

    def get(self, key: K, default: Any = None) -> Any:
        try:
            value = self._data[key]
        except KeyError:
            self._misses += 1
            return default
        if (self._expires or self._own_expires) and self._expired(key):
            self._expired_miss(key, call_missing=False)
            return default
        self._hits += 1
        return value

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


class _PlainFIFOCache(FIFOCache[K, V]):
    """The lean twin of :class:`FIFOCache`: no sizes, TTLs, listener or stats to check."""

    _is_plain = True
    _general = FIFOCache

    def __getitem__(self, key: K) -> V:
        try:
            return self._data[key]
        except KeyError:
            return self.__missing__(key)

    def get(self, key: K, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __setitem__(self, key: K, value: V) -> None:
        data = self._data
        if key in data:
            data[key] = value
            data.move_to_end(key)
            return
        if len(data) >= self._maxlen:
            data.popitem(False)
        data[key] = value


FIFOCache._lean_variants = {"untimed": _PlainFIFOCache}

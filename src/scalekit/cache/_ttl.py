"""TTLCache: the cachetools-compatible name for an LRU cache whose items expire."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from scalekit.cache._base import EvictionListener, K, V
from scalekit.cache._lru import LRUCache, _LeanTimedLRU
from scalekit.protocols import Clock

__all__ = ["TTLCache"]


class TTLCache(LRUCache[K, V]):
    """An LRU cache whose items expire ``ttl`` seconds after they are written.

    A drop-in for :class:`cachetools.TTLCache`: the same signature, and expired
    items are invisible to lookups, ``in``, ``len`` and iteration, and are removed
    before any live item when room is needed. ``set(key, value, ttl=...)`` gives
    one item its own TTL. Equivalent to ``LRUCache(maxsize, ttl=ttl, timer=timer)``,
    except that iteration follows the order of expiry (write order), as in
    cachetools, where an ``LRUCache`` iterates least recently used first.

    Runtime complexity: O(1) amortized for every read and write, expiry included.

    >>> from scalekit.testing import FakeClock
    >>> clock = FakeClock()
    >>> cache = TTLCache(maxsize=100, ttl=10, timer=clock)
    >>> cache["token"] = "abc"
    >>> clock.advance(9.5)
    9.5
    >>> cache.ttl_of("token")
    0.5
    >>> clock.advance(0.5)
    10.0
    >>> "token" in cache
    False
    """

    def __init__(
        self,
        maxsize: float,
        ttl: float | timedelta,
        timer: Clock = time.monotonic,
        getsizeof: Callable[[V], float] | None = None,
        *,
        on_evict: EvictionListener | None = None,
        stats: bool = False,
    ) -> None:
        super().__init__(maxsize, getsizeof, ttl=ttl, timer=timer, on_evict=on_evict, stats=stats)

    def _iteration_order(self) -> list[K]:
        """As in cachetools: in the order of the deadlines given by the cache's
        ``ttl`` (write order), then the keys given their own TTL, least recently
        used first. Eviction still takes the least recently used item."""
        timed = self._expires
        if len(timed) == len(self._data):
            return list(timed)
        return [*timed, *(key for key in self._data if key not in timed)]


class _PlainTTLCache(_LeanTimedLRU[K, V], TTLCache[K, V]):
    """The lean twin of :class:`TTLCache`: no sizes, listener or stats to check."""

    _general = TTLCache


TTLCache._lean_variants = {"timed": _PlainTTLCache}

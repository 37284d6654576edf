"""Caches: in memory (LRU, LFU, FIFO, TinyLFU with TTLs, stats and memoizing
decorators) and shared by many processes on Redis or memcached.

A drop-in for cachetools' cache classes and decorators::

    from scalekit.cache import LRUCache, TTLCache, cached

Every in-memory cache is a bounded :class:`~collections.abc.MutableMapping` with
O(1) reads, writes, evictions and expiry. :class:`RedisCache`,
:class:`AsyncRedisCache` and :class:`MemcachedCache` are the shared tier: a
:class:`~scalekit.protocols.Store` on a server, JSON values, one round trip per
call. :class:`SQLiteCache` is the shared tier of the processes of one host, on
one SQLite file with no server. :class:`TieredCache` puts a near cache in front
of the shared tier, kept fresh by :class:`RedisInvalidation` (or
:class:`SQLiteInvalidation`, over the SQLite file). See :doc:`docs/cache.md` for a guide.
"""

from scalekit.cache import keys
from scalekit.cache._base import Cache, CacheStats, EvictionCause, EvictionListener
from scalekit.cache._decorators import CacheInfo, cached, cachedmethod
from scalekit.cache._fifo import FIFOCache
from scalekit.cache._invalidation import RedisInvalidation
from scalekit.cache._lfu import LFUCache
from scalekit.cache._lru import LRUCache
from scalekit.cache._memcached import MemcachedCache
from scalekit.cache._redis import AsyncRedisCache, RedisCache
from scalekit.cache._remote import (
    BYTES,
    JSON,
    BytesSerializer,
    JSONSerializer,
    Serializer,
    StoreStats,
)
from scalekit.cache._sqlite import SQLiteCache
from scalekit.cache._sqlite_invalidation import SQLiteInvalidation
from scalekit.cache._threadsafe import ThreadSafeCache
from scalekit.cache._tiered import TieredCache, TieredStats
from scalekit.cache._tinylfu import FrequencySketch, TinyLFUCache
from scalekit.cache._ttl import TTLCache

__all__ = [
    "BYTES",
    "JSON",
    "AsyncRedisCache",
    "BytesSerializer",
    "Cache",
    "CacheInfo",
    "CacheStats",
    "EvictionCause",
    "EvictionListener",
    "FIFOCache",
    "FrequencySketch",
    "JSONSerializer",
    "LFUCache",
    "LRUCache",
    "MemcachedCache",
    "RedisCache",
    "RedisInvalidation",
    "SQLiteCache",
    "SQLiteInvalidation",
    "Serializer",
    "StoreStats",
    "TTLCache",
    "ThreadSafeCache",
    "TieredCache",
    "TieredStats",
    "TinyLFUCache",
    "cached",
    "cachedmethod",
    "keys",
]

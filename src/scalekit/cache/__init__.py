"""In-memory caches: LRU, LFU and FIFO with TTLs, stats and memoizing decorators.

A drop-in for cachetools' cache classes and decorators::

    from scalekit.cache import LRUCache, TTLCache, cached

Every cache is a bounded :class:`~collections.abc.MutableMapping` with O(1)
reads, writes, evictions and expiry; see :doc:`docs/cache.md` for a guide.
"""

from scalekit.cache import keys
from scalekit.cache._base import Cache, CacheStats, EvictionCause, EvictionListener
from scalekit.cache._decorators import CacheInfo, cached, cachedmethod
from scalekit.cache._fifo import FIFOCache
from scalekit.cache._lfu import LFUCache
from scalekit.cache._lru import LRUCache
from scalekit.cache._threadsafe import ThreadSafeCache
from scalekit.cache._tinylfu import FrequencySketch, TinyLFUCache
from scalekit.cache._ttl import TTLCache

__all__ = [
    "Cache",
    "CacheInfo",
    "CacheStats",
    "EvictionCause",
    "EvictionListener",
    "FIFOCache",
    "FrequencySketch",
    "LFUCache",
    "LRUCache",
    "TTLCache",
    "ThreadSafeCache",
    "TinyLFUCache",
    "cached",
    "cachedmethod",
    "keys",
]

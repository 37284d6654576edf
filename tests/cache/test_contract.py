"""The cache contract (tests/contracts/cache_contract.py) over every cache class.

A new cache class adds one line to CACHES.
"""

from __future__ import annotations

import pytest

from scalekit.cache import (
    FIFOCache,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TinyLFUCache,
    TTLCache,
)
from tests.contracts.cache_contract import CacheContract, CacheFactory

CACHES = [
    pytest.param(CacheFactory(LRUCache, "lru"), id="LRUCache"),
    pytest.param(CacheFactory(LFUCache, "lfu"), id="LFUCache"),
    pytest.param(CacheFactory(FIFOCache, "fifo"), id="FIFOCache"),
    pytest.param(CacheFactory(TTLCache, "lru", ttl=3600.0, ttl_positional=True), id="TTLCache"),
    pytest.param(CacheFactory(LRUCache, "lru", ttl=3600.0), id="LRUCache-ttl"),
    pytest.param(CacheFactory(TinyLFUCache, "tinylfu"), id="TinyLFUCache"),
    pytest.param(CacheFactory(TinyLFUCache, "tinylfu", ttl=3600.0), id="TinyLFUCache-ttl"),
    pytest.param(CacheFactory(LRUCache, "lru", wrapper=ThreadSafeCache), id="ThreadSafeCache"),
    pytest.param(
        CacheFactory(TTLCache, "lru", ttl=3600.0, ttl_positional=True, wrapper=ThreadSafeCache),
        id="ThreadSafeCache-TTLCache",
    ),
]


@pytest.mark.parametrize("make", CACHES)
class TestCacheContract(CacheContract):
    """Every test of CacheContract, once per cache."""

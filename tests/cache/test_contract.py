"""The cache contract (tests/contracts/cache_contract.py) over every cache class.

A new cache class adds one line to CACHES.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from scalekit.cache import (
    FIFOCache,
    LFUCache,
    LRUCache,
    ThreadSafeCache,
    TinyLFUCache,
    TTLCache,
)
from scalekit.testing import check_cache
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


class _Broken(LRUCache[Any, Any]):
    """Each flag breaks one promise of the contract."""

    flaw = ""

    def set(self, key: Any, value: Any, *, ttl: Any = None) -> None:
        if self.flaw == "accepts nan" and ttl != ttl:
            self[key] = value
            return
        if self.flaw == "overflow" and isinstance(ttl, int) and ttl > 10**300:
            raise OverflowError("int too large to convert to float")
        if self.flaw == "never expires":
            ttl = None
        super().set(key, value, ttl=ttl)

    def __iter__(self) -> Any:
        if self.flaw == "iterates expired":
            return iter(list(self._data))
        return super().__iter__()


@pytest.mark.parametrize(
    ("flaw", "message"),
    [
        ("accepts nan", "ttl=nan must be refused"),
        ("overflow", "must be refused with an error of scalekit.errors"),
        ("never expires", "ttl_of() of an item set with ttl=30"),
        ("iterates expired", "iteration skips expired items"),
    ],
)
def test_check_cache_finds_a_broken_promise(flaw: str, message: str) -> None:
    def make(maxsize: int, timer: Any) -> _Broken:
        cache = _Broken(maxsize, timer=timer, stats=True)
        cache.flaw = flaw
        return cache

    with pytest.raises(AssertionError, match=re.escape(message)):
        check_cache(make)


def test_check_cache_on_a_plain_dict_names_the_missing_store_method() -> None:
    with pytest.raises(AssertionError, match=re.escape("Store.set()")):
        check_cache(lambda maxsize, timer: {})


def test_check_cache_on_an_unbounded_store_without_a_clock() -> None:
    check_cache(lambda maxsize, timer: LRUCache(math.inf), bounded=False, expiring=False)
    with pytest.raises(AssertionError, match="maxsize 3"):
        check_cache(lambda maxsize, timer: LRUCache(math.inf), expiring=False)

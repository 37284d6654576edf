"""The protocol layer: what conforms, what does not, and the defaults."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import FrozenInstanceError, dataclass

import pytest

from scalekit import protocols
from scalekit.cache import LRUCache, ThreadSafeCache, TTLCache
from scalekit.hashing import murmur3_64
from scalekit.protocols import (
    AsyncStore,
    Clock,
    HashFunction,
    Store,
    SupportsNodeFor,
    SupportsPick,
    SupportsStats,
)


class DictStore:
    """The smallest Store: a dict, no expiry."""

    def __init__(self) -> None:
        self.data: dict[str, int] = {}

    def get(self, key: str, default: int | None = None) -> int | None:
        return self.data.get(key, default)

    def set(self, key: str, value: int, *, ttl: float | None = None) -> None:
        self.data[key] = value

    def delete(self, key: str) -> bool:
        return self.data.pop(key, None) is not None

    def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        return {k: self.data[k] for k in keys if k in self.data}

    def set_many(self, items: Mapping[str, int], *, ttl: float | None = None) -> None:
        self.data.update(items)

    def add(self, key: str, value: int, *, ttl: float | None = None) -> bool:
        if key in self.data:
            return False
        self.data[key] = value
        return True

    def ttl_of(self, key: str) -> float | None:
        if key not in self.data:
            raise KeyError(key)
        return None


class AsyncDictStore:
    def __init__(self) -> None:
        self.inner = DictStore()

    async def get(self, key: str, default: int | None = None) -> int | None:
        return self.inner.get(key, default)

    async def set(self, key: str, value: int, *, ttl: float | None = None) -> None:
        self.inner.set(key, value, ttl=ttl)

    async def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    async def get_many(self, keys: Iterable[str]) -> dict[str, int]:
        return self.inner.get_many(keys)

    async def set_many(self, items: Mapping[str, int], *, ttl: float | None = None) -> None:
        self.inner.set_many(items, ttl=ttl)

    async def add(self, key: str, value: int, *, ttl: float | None = None) -> bool:
        return self.inner.add(key, value, ttl=ttl)

    async def ttl_of(self, key: str) -> float | None:
        return self.inner.ttl_of(key)


@dataclass(frozen=True)
class CounterStats:
    hits: int


class Counted:
    def stats(self) -> CounterStats:
        return CounterStats(hits=3)


def test_default_clock_is_monotonic() -> None:
    assert protocols.monotonic is time.monotonic
    assert isinstance(time.monotonic, Clock)
    assert isinstance(lambda: 0.0, Clock)
    assert not isinstance(3.0, Clock)


def test_hash_functions_conform() -> None:
    assert isinstance(murmur3_64, HashFunction)
    assert not isinstance("not callable", HashFunction)


def test_a_dict_backed_store_conforms_and_a_mapping_does_not() -> None:
    store: Store[int] = DictStore()
    assert isinstance(store, Store)
    assert not isinstance({}, Store)  # a dict has no set/delete/get_many
    store.set_many({"a": 1, "b": 2})
    assert store.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a", 7) == 7
    assert store.add("b", 9) is False
    assert store.add("a", 9) is True
    assert store.get("a") == 9


def test_scalekit_caches_are_stores_with_an_atomic_add() -> None:
    for cache in (LRUCache(10), TTLCache(10, ttl=60), ThreadSafeCache(LRUCache(10))):
        assert isinstance(cache, Store)
        assert cache.add("k", 1) is True
        assert cache.add("k", 2) is False
        assert cache["k"] == 1


def test_an_expired_key_can_be_added_again() -> None:
    from scalekit.testing import FakeClock

    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(10, ttl=5, timer=clock)
    assert cache.add("k", 1) is True
    clock.advance(6)
    assert cache.add("k", 2) is True
    assert cache["k"] == 2
    assert cache.ttl_of("k") == 5


def test_sharders_and_balancers_conform_to_the_shared_protocols() -> None:
    from scalekit.balancing import LeastConnections, RoundRobin
    from scalekit.sharding import HashRing, JumpHash, MaglevHash, RendezvousHash, SlotMap

    for sharder in (HashRing(["a"]), JumpHash(["a"]), MaglevHash(["a"]), RendezvousHash(["a"])):
        assert isinstance(sharder, SupportsNodeFor)
        assert sharder.node_for("k") == "a"
    assert isinstance(SlotMap(["a"]), SupportsNodeFor)
    for balancer in (RoundRobin(["a"]), LeastConnections(["a"])):
        assert isinstance(balancer, SupportsPick)
    assert not isinstance(object(), SupportsPick)


def test_async_store_conforms() -> None:
    store: AsyncStore[int] = AsyncDictStore()
    assert isinstance(store, AsyncStore)

    async def scenario() -> dict[str, int]:
        await store.set("x", 1, ttl=5)
        return await store.get_many(["x", "y"])

    assert asyncio.run(scenario()) == {"x": 1}


def test_stats_snapshots_are_frozen() -> None:
    counted: SupportsStats[CounterStats] = Counted()
    assert isinstance(counted, SupportsStats)
    snapshot = counted.stats()
    with pytest.raises(FrozenInstanceError):
        snapshot.hits = 4  # type: ignore[misc]

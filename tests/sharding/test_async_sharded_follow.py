"""AsyncShardedStore follows a reshard that a sync store carries out: its reads and
writes of moving keys go where the plan says, so nothing it writes is lost."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from scalekit.cache import LRUCache, ThreadSafeCache
from scalekit.errors import ArgumentTypeError, ConfigurationError
from scalekit.sharding import AsyncShardedStore, RendezvousHash, ReshardPlan, ShardedStore


class AsyncShard:
    """An AsyncStore over an in-memory cache (what an AsyncRedisCache is to Redis)."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    async def get(self, key: str, default: Any = None) -> Any:
        await asyncio.sleep(0)
        return self.cache.get(key, default)

    async def set(self, key: str, value: Any, *, ttl: Any = None) -> None:
        await asyncio.sleep(0)
        self.cache.set(key, value, ttl=ttl)

    async def add(self, key: str, value: Any, *, ttl: Any = None) -> bool:
        return self.cache.add(key, value, ttl=ttl)

    async def delete(self, key: str) -> bool:
        return self.cache.delete(key)

    async def ttl_of(self, key: str) -> Any:
        return self.cache.ttl_of(key)

    async def get_many(self, keys: Any) -> dict[str, Any]:
        return self.cache.get_many(keys)

    async def set_many(self, items: Any, *, ttl: Any = None) -> None:
        self.cache.set_many(items, ttl=ttl)


def test_an_async_store_follows_a_reshard_and_loses_no_write() -> None:
    caches = {n: ThreadSafeCache(LRUCache(100_000)) for n in "abcd"}  # two threads use them
    keys = [f"k{i}" for i in range(4000)]
    mover = ShardedStore(RendezvousHash(["a", "b", "c"]), {n: caches[n] for n in "abc"})
    mover.set_many(dict.fromkeys(keys, 0))
    plan = mover.sharder.plan_add("d")  # type: ignore[attr-defined]
    published = plan.to_json()
    moving = [k for k in keys if plan.move_for(k)]

    async def app_server() -> dict[str, int]:
        shards = {n: AsyncShard(caches[n]) for n in "abcd"}
        store = AsyncShardedStore(RendezvousHash(["a", "b", "c"]), {n: shards[n] for n in "abc"})
        followed = ReshardPlan.from_json(published)
        store.follow(followed, {"d": shards["d"]})
        mover.follow(plan, {"d": caches["d"]})
        thread = threading.Thread(target=mover.reshard, args=(plan,), kwargs={"batch_size": 50})
        thread.start()
        written: dict[str, int] = {}
        version = 0
        while thread.is_alive() or version < 3:
            version += 1
            for key in moving[version % 7 :: 13]:
                await store.set(key, version)
                written[key] = version
                assert await store.get(key) == version
            assert await store.add(moving[0], -5) is False
        thread.join()
        store.complete(followed)
        assert await store.get_many(list(written)) == written
        assert await store.ttl_of(moving[1]) is None
        return written

    written = asyncio.run(app_server())
    assert mover.sharder.nodes == ("a", "b", "c", "d")
    assert sum(len(c) for c in caches.values()) == len(keys)  # nothing left behind
    for key, version in written.items():
        assert caches["d"][key] == version  # every write is at the new owner


def test_follow_refuses_bad_arguments() -> None:
    stores = {n: AsyncShard(LRUCache(10)) for n in "abc"}
    store = AsyncShardedStore(RendezvousHash(["a", "b"]), {n: stores[n] for n in "ab"})
    with pytest.raises(ArgumentTypeError):
        store.follow("plan")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="no store"):
        store.follow(store.sharder.plan_add("c"))  # type: ignore[attr-defined]
    with pytest.raises(ArgumentTypeError):
        store.complete(None)  # type: ignore[arg-type]
    replicated = AsyncShardedStore(RendezvousHash(["a", "b"]), stores, replicas=1)
    with pytest.raises(ConfigurationError, match="replicas"):
        replicated.follow(replicated.sharder.plan_add("c"), {"c": stores["c"]})  # type: ignore[attr-defined]
